//! Reachability matrices: every source against every destination for one
//! port, with the reason for each cell. Used by `ztunnel policy matrix`, the
//! demo and the tests of the example scenarios.

use std::net::IpAddr;

use serde::Serialize;

use crate::cluster::Cluster;
use crate::eval::{Endpoint, EvalError, Verdict, evaluate};
use crate::model::Protocol;

/// One cell of a matrix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cell {
    /// Whether a connection from the row to the column is allowed.
    pub allowed: bool,
    /// The full verdict, `None` when the two ends have no common IP family.
    pub verdict: Option<Verdict>,
}

/// A reachability matrix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Matrix {
    /// Destination port.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// Row and column names (`namespace/name` or an address).
    pub endpoints: Vec<String>,
    /// `cells[from][to]`.
    pub cells: Vec<Vec<Cell>>,
}

impl Matrix {
    /// The cell for two named endpoints.
    pub fn get(&self, from: &str, to: &str) -> Option<&Cell> {
        let i = self.endpoints.iter().position(|e| e == from)?;
        let j = self.endpoints.iter().position(|e| e == to)?;
        Some(&self.cells[i][j])
    }

    /// The matrix as rows of `1`/`0` strings, for compact assertions.
    pub fn bits(&self) -> Vec<String> {
        self.cells.iter().map(|row| row.iter().map(|c| if c.allowed { '1' } else { '0' }).collect()).collect()
    }
}

/// The default endpoints of a matrix: every pod that policy applies to, by
/// key, then the given external addresses.
pub fn default_endpoints(cluster: &Cluster, external: &[IpAddr]) -> Vec<Endpoint> {
    cluster
        .pods()
        .filter(|p| p.is_policy_endpoint())
        .map(|p| Endpoint::Pod(p.key.clone()))
        .chain(external.iter().map(|ip| Endpoint::Ip(*ip)))
        .collect()
}

/// Computes the matrix over `endpoints` for `port`/`protocol`.
pub fn matrix(cluster: &Cluster, endpoints: &[Endpoint], port: u16, protocol: Protocol) -> Result<Matrix, EvalError> {
    let mut cells = Vec::with_capacity(endpoints.len());
    for from in endpoints {
        let mut row = Vec::with_capacity(endpoints.len());
        for to in endpoints {
            let cell = match evaluate(cluster, from, to, port, protocol) {
                Ok(v) => Cell { allowed: v.allowed(), verdict: Some(v) },
                Err(EvalError::NoCommonFamily { .. }) => Cell { allowed: false, verdict: None },
                Err(e) => return Err(e),
            };
            row.push(cell);
        }
        cells.push(row);
    }
    let names = endpoints
        .iter()
        .map(|e| match e {
            Endpoint::Pod(k) => k.to_string(),
            Endpoint::Ip(ip) => ip.to_string(),
        })
        .collect();
    Ok(Matrix { port, protocol, endpoints: names, cells })
}
