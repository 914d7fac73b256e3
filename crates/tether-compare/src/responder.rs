//! The echo responder of the reqrep workload: a child process (this binary, re-invoked
//! with the hidden `responder` subcommand) that always uses async-nats, so both libraries
//! talk to the very same responder.

use std::io::Read as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::Res;

/// The responder's loop; over TLS when `tls_ca` is given, trusting that CA.
pub(crate) fn run_responder(server: &str, subject: &str, tls_ca: Option<&Path>) -> Res<()> {
    // Exit when the parent goes away (it holds our stdin open while it lives).
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        std::process::exit(0);
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut opts = async_nats::ConnectOptions::new();
        if let Some(ca) = tls_ca {
            opts = opts
                .add_root_certificates(ca.to_path_buf())
                .require_tls(true);
        }
        let client = opts.connect(server).await?;
        let mut sub = client.subscribe(subject.to_owned()).await?;
        client.flush().await?;
        while let Some(msg) = sub.next().await {
            if let Some(reply) = msg.reply {
                client.publish(reply, msg.payload).await?;
            }
        }
        Ok(())
    })
}

/// The responder child; killed on drop.
#[derive(Debug)]
pub(crate) struct Responder {
    child: Child,
}

impl Responder {
    /// Starts the responder on `server`, over TLS trusting `tls_ca` when given.
    pub(crate) fn spawn(server: &str, subject: &str, tls_ca: Option<&Path>) -> Res<Self> {
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.args(["responder", "--server", server, "--subject", subject]);
        if let Some(ca) = tls_ca {
            cmd.arg("--tls-ca").arg(ca);
        }
        let child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        Ok(Self { child })
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Retries a request until the responder answers (over TLS trusting `tls_ca` when
/// given).
pub(crate) async fn wait_responder(
    url: &str,
    subject: &str,
    responder: &mut Responder,
    tls_ca: Option<&Path>,
) -> Res<()> {
    let mut opts = tether::ConnectOptions::new();
    if let Some(ca) = tls_ca {
        opts = opts.tls_ca_file(ca);
    }
    let client = opts.connect(url).await?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = responder.child.try_wait()? {
            return Err(format!("the responder exited early ({status})").into());
        }
        match client
            .request_with(subject, None, b"ready?", Duration::from_millis(500))
            .await
        {
            Ok(m) if &m.payload[..] == b"ready?" => break,
            Ok(_) | Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(_) => return Err("the responder answered with a wrong payload".into()),
            Err(e) => return Err(format!("the responder never answered: {e}").into()),
        }
    }
    client.close().await;
    Ok(())
}
