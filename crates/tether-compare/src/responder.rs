//! The echo responder of the reqrep workload: a child process (this binary, re-invoked
//! with the hidden `responder` subcommand) that always uses async-nats, so both libraries
//! talk to the very same responder.

use std::io::Read as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::Res;

pub(crate) fn run_responder(server: &str, subject: &str) -> Res<()> {
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
        let client = async_nats::connect(server).await?;
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
    pub(crate) fn spawn(server: &str, subject: &str) -> Res<Self> {
        let exe = std::env::current_exe()?;
        let child = Command::new(exe)
            .args(["responder", "--server", server, "--subject", subject])
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

/// Retries a request until the responder answers.
pub(crate) async fn wait_responder(url: &str, subject: &str, responder: &mut Responder) -> Res<()> {
    let client = tether::connect(url).await?;
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
