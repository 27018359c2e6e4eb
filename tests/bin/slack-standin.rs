//! The Slack stand-in as a process, for `make run`: listens on the address given (default
//! 127.0.0.1:0), prints its webhook URL on the first line, then each accepted message as
//! one line of JSON.

use std::io::Write;

use conveyor_e2e::slack::SlackStandIn;

#[tokio::main]
async fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:0".into());
    let Ok(addr) = addr.parse() else {
        eprintln!("slack-standin: `{addr}` is not an address like 127.0.0.1:9000");
        std::process::exit(2);
    };
    let slack = SlackStandIn::on(addr).await;
    slack.on_accept(|message| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{message}");
        let _ = out.flush();
    });
    println!("{}", slack.url());
    let _ = std::io::stdout().flush();
    std::future::pending::<()>().await;
}
