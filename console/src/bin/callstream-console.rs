//! `callstream-console`: the ops console. See `callstream_console`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = callstream_consumers::cli::start(
        env!("CARGO_BIN_NAME"),
        "callstream console: deliveries, events, calls and dead letters in a browser, with redelivery.",
    )?;
    let console = callstream_console::Console::build(settings).await?;
    tracing::info!(port = console.port(), "console running");
    console
        .run(callstream_runtime::shutdown::on_signal()?)
        .await
}
