//! The topology as metrics, read from the live topology at each scrape:
//! `chroma_shift_topology_epoch` (bumped by every cutover and rollback, so a dashboard marks
//! switches where it changes) and `chroma_shift_primary{backend}` (1 for the primary).

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGauge, IntGaugeVec, Opts};
use shift_config::BackendName;
use shift_proxy::topology::SharedTopology;

const EPOCH: &str = "chroma_shift_topology_epoch";
const EPOCH_HELP: &str =
    "The topology's epoch: bumped by every cutover and rollback (persisted across restarts).";
const PRIMARY: &str = "chroma_shift_primary";
const PRIMARY_HELP: &str = "1 for the backend that is primary now, 0 for the other.";

/// Reads the live topology when Prometheus scrapes.
#[derive(Debug)]
pub struct TopologyCollector {
    /// The topology every request reads.
    topology: SharedTopology,
    /// The two families' descriptions, for the registry's checks.
    descs: Vec<Desc>,
}

impl TopologyCollector {
    pub fn new(topology: SharedTopology) -> prometheus::Result<TopologyCollector> {
        let (epoch, primary) = Self::families()?;
        let descs = epoch
            .desc()
            .into_iter()
            .chain(primary.desc())
            .cloned()
            .collect();
        Ok(TopologyCollector { topology, descs })
    }

    fn families() -> prometheus::Result<(IntGauge, IntGaugeVec)> {
        Ok((
            IntGauge::new(EPOCH, EPOCH_HELP)?,
            IntGaugeVec::new(Opts::new(PRIMARY, PRIMARY_HELP), &["backend"])?,
        ))
    }
}

impl Collector for TopologyCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Ok((epoch, primary)) = Self::families() else {
            return Vec::new();
        };
        let topology = self.topology.current();
        epoch.set(i64::try_from(topology.epoch).unwrap_or(i64::MAX));
        for backend in [BackendName::Old, BackendName::New] {
            primary
                .with_label_values(&[backend.as_str()])
                .set(i64::from(backend == topology.primary));
        }
        let mut families = epoch.collect();
        families.extend(primary.collect());
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Encoder, Registry, TextEncoder};
    use shift_config::MirrorMode;
    use shift_proxy::topology::{shared, ReadPolicy, Topology};

    fn scrape(registry: &Registry) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut out)
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_metrics_follow_the_live_topology() {
        let topology = shared(Topology {
            epoch: 3,
            primary: BackendName::Old,
            mode: MirrorMode::Journaled,
            reads: ReadPolicy::default(),
            paused: false,
            mirror_stopped: false,
        });
        let registry = Registry::new();
        registry
            .register(Box::new(TopologyCollector::new(topology.clone()).unwrap()))
            .unwrap();
        let text = scrape(&registry);
        assert!(text.contains("chroma_shift_topology_epoch 3\n"), "{text}");
        assert!(
            text.contains("chroma_shift_primary{backend=\"old\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("chroma_shift_primary{backend=\"new\"} 0\n"),
            "{text}"
        );

        let next = Topology {
            epoch: 4,
            primary: BackendName::New,
            ..(*topology.current()).clone()
        };
        topology.replace(std::sync::Arc::new(next));
        let text = scrape(&registry);
        assert!(text.contains("chroma_shift_topology_epoch 4\n"), "{text}");
        assert!(
            text.contains("chroma_shift_primary{backend=\"old\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("chroma_shift_primary{backend=\"new\"} 1\n"),
            "{text}"
        );
    }
}
