//! A real etcd cluster for a test: N members (Debian's `etcd-server`, 3.4) on free loopback
//! ports, their data in a temp dir under /dev/shm when it exists (no fsync stalls on a shared
//! disk), killed when dropped. A member can be killed and started again (quorum loss) or
//! paused. The binary: `CHROMA_SHIFT_ETCD`, else `etcd` on the PATH.

use std::path::PathBuf;
use std::time::Duration;

use shift_local_chroma::free_port;

use crate::daemon::{find_bin, http_get, Daemon};

/// How long a cluster may take to elect a leader.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running etcd cluster.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Member>,
    /// Holds every member's data dir and log.
    _dir: tempfile::TempDir,
}

#[derive(Debug)]
struct Member {
    client_port: u16,
    daemon: Daemon,
}

impl EtcdCluster {
    /// Starts `members` members and waits until every one reports a healthy cluster.
    pub async fn start(members: usize) -> anyhow::Result<EtcdCluster> {
        anyhow::ensure!(members > 0, "an etcd cluster needs a member");
        let bin = find_bin("CHROMA_SHIFT_ETCD", &[], "etcd")?;
        let shm = PathBuf::from("/dev/shm");
        let mut builder = tempfile::Builder::new();
        builder.prefix("chroma-shift-etcd-");
        let dir = if shm.is_dir() {
            builder.tempdir_in(shm)?
        } else {
            builder.tempdir()?
        };
        let ports: Vec<(u16, u16)> = (0..members)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<std::io::Result<_>>()?;
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let token = dir
            .path()
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| "chroma-shift-test".into());
        let mut cluster = EtcdCluster {
            members: Vec::new(),
            _dir: dir,
        };
        for (i, (client, peer)) in ports.iter().enumerate() {
            let root = cluster._dir.path();
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let args = vec![
                format!("--name=m{i}"),
                format!("--data-dir={}", root.join(format!("m{i}")).display()),
                format!("--listen-client-urls={client_url}"),
                format!("--advertise-client-urls={client_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster={}", initial.join(",")),
                "--initial-cluster-state=new".into(),
                format!("--initial-cluster-token={token}"),
                "--log-level=warn".into(),
            ];
            let log = root.join(format!("m{i}.log"));
            let mut daemon = Daemon::new(&format!("etcd m{i}"), &bin, args, log);
            daemon.start()?;
            cluster.members.push(Member {
                client_port: *client,
                daemon,
            });
        }
        for i in 0..members {
            cluster.wait_healthy(i).await?;
        }
        Ok(cluster)
    }

    /// The client URLs of every member (`http://127.0.0.1:PORT`), what an etcd client takes.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|member| format!("http://127.0.0.1:{}", member.client_port))
            .collect()
    }

    /// Kills member `i` (SIGKILL); its data stays for [`EtcdCluster::restart`].
    pub fn kill(&mut self, i: usize) {
        self.members[i].daemon.kill();
    }

    /// Starts member `i` again on its data and waits until it reports a healthy cluster.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.members[i].daemon.start()?;
        self.wait_healthy(i).await
    }

    /// Pauses (`STOP`) or continues (`CONT`) member `i`.
    pub fn signal(&self, i: usize, signal: &str) -> anyhow::Result<()> {
        self.members[i].daemon.signal(signal)
    }

    /// Whether member `i` answers that the cluster is healthy (has a leader and quorum).
    pub async fn healthy(&self, i: usize) -> bool {
        matches!(
            http_get(self.members[i].client_port, "/health").await,
            Ok((200, body)) if body.contains("\"health\":\"true\"")
        )
    }

    /// The value at `key`, read through any member that answers (`None`: absent).
    pub async fn get(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let mut client = etcd_client::Client::connect(self.endpoints(), None).await?;
        let answer = tokio::time::timeout(READY_TIMEOUT, client.get(key, None)).await??;
        Ok(answer.kvs().first().map(|kv| kv.value().to_vec()))
    }

    /// The last lines of member `i`'s log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        self.members[i].daemon.log_tail(lines)
    }

    async fn wait_healthy(&mut self, i: usize) -> anyhow::Result<()> {
        let member = &mut self.members[i];
        let port = member.client_port;
        member
            .daemon
            .wait_healthy(port, "/health", "\"health\":\"true\"", READY_TIMEOUT)
            .await
    }
}
