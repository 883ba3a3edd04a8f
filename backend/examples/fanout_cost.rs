//! CPU per Management API post, as a Lambda function spends it in a fan-out:
//! the same `ManagementApi` pusher the Lambda binary uses (SigV4 signing, the
//! SDK's HTTP client, 64 in flight), posting to chat-local's Management API.
//!
//! ```sh
//! cargo build --release -p backend --bin chat-local --example fanout_cost
//! target/release/chat-local --addr 127.0.0.1:0 --management-addr 127.0.0.1:9190 &
//! target/release/examples/fanout_cost http://127.0.0.1:9190/local 10000
//! ```
//!
//! The ids are unknown to chat-local, so every post is answered 410 Gone:
//! the client does the same work as for a delivered post (sign, send, read
//! the answer). Locally there is no TLS; on AWS each post also pays for TLS
//! record encryption on a kept-alive connection, a small part of the total.

use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::config::Credentials;
use backend::pusher::apigw::{ManagementApi, PostPolicy};
use backend::pusher::{Frame, Pusher};

/// CPU time of this process so far (user + system), from /proc.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("Linux /proc");
    // Fields after the command name (which may hold spaces) start at ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let endpoint = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8090/local".into());
    let posts: usize = args.next().map_or(Ok(10_000), |n| n.parse())?;
    let sdk_config = aws_config::SdkConfig::builder()
        .region(Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::SharedCredentialsProvider::new(
            Credentials::new("local", "local", None, None, "fanout_cost"),
        ))
        .behavior_version(BehaviorVersion::latest())
        .build();
    let api = ManagementApi::new(sdk_config, None, PostPolicy::default());
    let pusher = api.pusher(&endpoint);
    let frame = Frame::from(
        r#"{"type":"message","id":"1764100000000-00000000000000ff","room":"lobby","name":"Ada","data":"a message of ordinary length, about one line of chat","ts":1764100000000}"#
            .to_owned(),
    );
    let ids: Vec<String> = (0..posts).map(|i| format!("conn{i:08}=")).collect();
    let recipients: Vec<&str> = ids.iter().map(String::as_str).collect();

    // A warm-up fan-out: connections opened, code paged in.
    pusher
        .push_all(&recipients[..posts.min(500)], &frame, 64)
        .await;

    let (cpu, wall) = (cpu_time(), Instant::now());
    let gone = pusher.push_all(&recipients, &frame, 64).await;
    let (cpu, wall) = (cpu_time() - cpu, wall.elapsed());
    anyhow::ensure!(
        gone.len() == posts,
        "every post should be answered Gone, {} were",
        gone.len()
    );
    let per_post = cpu.as_secs_f64() * 1e6 / posts as f64;
    println!("{posts} posts in {wall:.2?} wall, {cpu:.2?} CPU: {per_post:.1} µs of CPU per post");
    // Lambda gives a function 1 vCPU at 1769 MB, in proportion below that.
    for memory in [256, 512, 1024, 1769] {
        let vcpu = f64::from(memory) / 1769.0;
        let seconds = per_post * 10_000.0 / 1e6 / vcpu;
        println!(
            "  at {memory:>4} MB ({vcpu:.2} vCPU): a fan-out to 10 000 members needs about {seconds:.1} s of its CPU"
        );
    }
    Ok(())
}
