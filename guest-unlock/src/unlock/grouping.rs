//! One attestation per broker configuration: the targets' tokens grouped
//! by broker list and pin set, at most [`MAX_VOLUMES`] volumes each.

use keybroker_proto::{SpkiPin, VolumeId, MAX_VOLUMES};

use super::discovery::Target;
use crate::config::BrokerUrl;

/// Targets sharing one broker list and pin set, at most [`MAX_VOLUMES`]
/// volumes: one attestation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Brokers, in token order.
    pub brokers: Vec<BrokerUrl>,
    /// Pins (sorted, deduplicated).
    pub pins: Vec<SpkiPin>,
    /// Distinct volumes to ask for, in first-seen order (1 to
    /// [`MAX_VOLUMES`], what one `Attest` may name).
    pub volumes: Vec<VolumeId>,
}

/// Groups the targets' tokens by (broker list, pin set), so that each
/// distinct broker configuration gets one attestation for all its volumes;
/// a configuration with more than [`MAX_VOLUMES`] volumes (the protocol's
/// limit per `Attest`) gets one attestation per [`MAX_VOLUMES`] of them,
/// in first-seen order, each its own session.
pub fn group_targets(targets: &[Target]) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for (_, tok) in targets.iter().flat_map(|t| t.tokens.iter()) {
        let mut pins = tok.spki_pins.clone();
        pins.sort_by_key(|p| *p.as_bytes());
        pins.dedup();
        let g = match groups
            .iter_mut()
            .position(|g| g.brokers == tok.brokers && g.pins == pins)
        {
            Some(i) => &mut groups[i],
            None => {
                groups.push(Group {
                    brokers: tok.brokers.clone(),
                    pins,
                    volumes: Vec::new(),
                });
                groups.last_mut().expect("just pushed")
            }
        };
        if !g.volumes.contains(&tok.volume) {
            g.volumes.push(tok.volume.clone());
        }
    }
    groups
        .into_iter()
        .flat_map(|g| {
            g.volumes
                .chunks(MAX_VOLUMES)
                .map(|vs| Group {
                    brokers: g.brokers.clone(),
                    pins: g.pins.clone(),
                    volumes: vs.to_vec(),
                })
                .collect::<Vec<_>>()
        })
        .collect()
}
