//! The map layouts of `bpf/maps.h`, as the compiler laid them out (read from
//! the object's BTF), must equal the Rust mirrors in `src/maps.rs`: sizes,
//! field names and byte offsets. A change to one side without the other
//! fails here.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::collections::BTreeMap;

use object::{Object, ObjectSection};

/// struct name → (size, [(member, byte offset)]).
type Structs = BTreeMap<String, (usize, Vec<(String, usize)>)>;

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

/// A minimal reader of the BTF type section: enough to list structs.
fn btf_structs(btf: &[u8]) -> Structs {
    assert_eq!(u16::from_le_bytes([btf[0], btf[1]]), 0xeb9f, "BTF magic (little-endian object)");
    let hdr_len = u32_at(btf, 4) as usize;
    let (type_off, type_len) = (u32_at(btf, 8) as usize, u32_at(btf, 12) as usize);
    let str_off = u32_at(btf, 16) as usize;
    let types = &btf[hdr_len + type_off..hdr_len + type_off + type_len];
    let strings = &btf[hdr_len + str_off..];
    let name = |off: u32| -> String {
        let s = &strings[off as usize..];
        String::from_utf8_lossy(&s[..s.iter().position(|c| *c == 0).unwrap()]).into_owned()
    };
    let mut out = Structs::new();
    let mut p = 0;
    while p < types.len() {
        let name_off = u32_at(types, p);
        let info = u32_at(types, p + 4);
        let size = u32_at(types, p + 8) as usize;
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        let kflag = info >> 31 == 1;
        p += 12;
        let extra = match kind {
            1 | 14 | 17 => 4,     // INT, VAR, DECL_TAG
            3 => 12,              // ARRAY
            4 | 5 => 12 * vlen,   // STRUCT, UNION
            6 | 13 => 8 * vlen,   // ENUM, FUNC_PROTO
            15 | 19 => 12 * vlen, // DATASEC, ENUM64
            _ => 0,               // PTR, FWD, TYPEDEF, modifiers, FUNC, FLOAT, TYPE_TAG
        };
        if kind == 4 {
            let members = (0..vlen)
                .map(|i| {
                    let m = p + 12 * i;
                    let bits = u32_at(types, m + 8);
                    let offset_bits = if kflag { bits & 0x00ff_ffff } else { bits };
                    (name(u32_at(types, m)), (offset_bits / 8) as usize)
                })
                .collect();
            out.insert(name(name_off), (size, members));
        }
        p += extra;
    }
    out
}

#[test]
fn rust_mirrors_match_the_objects_btf() {
    let obj = object::File::parse(zt_ebpf::OBJECT).unwrap();
    let btf = obj.section_by_name(".BTF").expect("the object carries BTF (built with -g)");
    let structs = btf_structs(btf.data().unwrap());
    for (name, size, fields) in zt_ebpf::maps::layouts() {
        let (c_size, c_fields) =
            structs.get(name).unwrap_or_else(|| panic!("struct {name} not in BTF: {:?}", structs.keys()));
        assert_eq!(*c_size, size, "size of {name}");
        let c: Vec<(&str, usize)> = c_fields.iter().map(|(n, o)| (n.as_str(), *o)).collect();
        assert_eq!(c, fields, "fields of {name}");
    }
}

#[test]
fn object_has_both_programs_and_all_maps() {
    let obj = object::File::parse(zt_ebpf::OBJECT).unwrap();
    let sections: Vec<&str> = obj.sections().filter_map(|s| s.name().ok()).collect();
    assert!(sections.contains(&"classifier/from_pod") && sections.contains(&"classifier/to_pod"), "{sections:?}");
    let symbols: Vec<String> =
        obj.symbols().filter_map(|s| object::ObjectSymbol::name(&s).ok().map(String::from)).collect();
    for m in zt_ebpf::map_names::ALL {
        assert!(symbols.iter().any(|s| s == m), "map {m} missing");
    }
}
