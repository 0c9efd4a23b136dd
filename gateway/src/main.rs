/// callstream webhook gateway: provider webhooks in, durable Kafka records out.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    callstream_gateway::cli::run().await
}
