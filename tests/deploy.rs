//! The container image and docker-compose.yml start each binary with
//! settings it accepts. Every binary refuses settings it does not know, so
//! an `ENV` in the image meant for one binary stops all the others at
//! start-up; and the directories that must outlive a container (the
//! gateway's spool, the archiver's local store) must be on volumes.
//!
//! No container engine runs here: the test reads the `Dockerfile` and the
//! compose file and loads each service's settings as its binary would, in
//! an environment holding exactly what the container would hold.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use callstream_consumers::recordings::settings::StoreKind;
use serde_norway::Value;

/// The binaries the image ships.
const BINARIES: &[&str] = &[
    "callstream-gateway",
    "callstream-dedup",
    "callstream-store",
    "callstream-analytics",
    "callstream-recordings",
    "callstream-crm",
    "callstream-replay",
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The runtime stage of the `Dockerfile`: its `ENV` pairs, its `WORKDIR`,
/// and its default command's binary.
struct Image {
    env: Vec<(String, String)>,
    workdir: PathBuf,
    /// `VOLUME` mount points.
    volumes: Vec<PathBuf>,
    default_binary: String,
}

fn image() -> Image {
    let text = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    let joined = text.replace("\\\n", " ");
    let instructions: Vec<&str> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let runtime = instructions
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("a FROM");
    let mut image = Image {
        env: Vec::new(),
        workdir: PathBuf::from("/"),
        volumes: Vec::new(),
        default_binary: String::new(),
    };
    for line in &instructions[runtime..] {
        let (instruction, args) = line.split_once(' ').unwrap_or((line, ""));
        match instruction {
            "ENV" => {
                for pair in args.split_whitespace() {
                    let (k, v) = pair
                        .split_once('=')
                        .unwrap_or_else(|| panic!("ENV takes K=V pairs here: {pair}"));
                    assert!(!v.contains('"'), "quoted ENV values are not read here");
                    image.env.push((k.to_string(), v.to_string()));
                }
            }
            "WORKDIR" => image.workdir = PathBuf::from(args.trim()),
            "VOLUME" => image
                .volumes
                .extend(args.split_whitespace().map(PathBuf::from)),
            "CMD" => {
                let cmd: Vec<String> = serde_json::from_str(args).expect("CMD in JSON form");
                image.default_binary = binary_name(&cmd[0]);
            }
            _ => {}
        }
    }
    image
}

fn binary_name(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).to_string()
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// One compose service built from this repository's image.
struct Service {
    name: String,
    binary: String,
    /// `--config <file>`, as a path in this repository (through the
    /// service's bind mounts).
    config: Option<PathBuf>,
    env: Vec<(String, String)>,
    /// Mount points inside the container.
    volume_targets: Vec<PathBuf>,
}

fn services(image: &Image) -> Vec<Service> {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).expect("compose file");
    let doc: Value = serde_norway::from_str(&text).expect("compose YAML");
    let mut out = Vec::new();
    for (name, service) in doc["services"].as_mapping().expect("services") {
        if service.get("build").is_none() {
            continue;
        }
        let mut mounts = BTreeMap::new();
        for volume in service
            .get("volumes")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let spec = scalar(volume);
            let mut parts = spec.split(':');
            let source = parts.next().expect("volume source").to_string();
            let target = PathBuf::from(parts.next().expect("volume target"));
            mounts.insert(target, source);
        }
        let command: Vec<String> = service
            .get("command")
            .and_then(Value::as_sequence)
            .map(|c| c.iter().map(scalar).collect())
            .unwrap_or_default();
        let binary = command
            .first()
            .map(|c| binary_name(c))
            .unwrap_or_else(|| image.default_binary.clone());
        let config = command
            .iter()
            .position(|a| a == "--config")
            .map(|at| PathBuf::from(&command[at + 1]))
            .map(|inside| {
                let source = mounts
                    .get(&inside)
                    .unwrap_or_else(|| panic!("{inside:?} is not mounted"));
                root().join(source)
            });
        let env = match service.get("environment") {
            Some(Value::Mapping(map)) => map.iter().map(|(k, v)| (scalar(k), scalar(v))).collect(),
            Some(Value::Sequence(list)) => list
                .iter()
                .map(|kv| {
                    let kv = scalar(kv);
                    let (k, v) = kv.split_once('=').expect("K=V");
                    (k.to_string(), v.to_string())
                })
                .collect(),
            _ => Vec::new(),
        };
        out.push(Service {
            name: scalar(name),
            binary,
            config,
            env,
            volume_targets: mounts.into_keys().collect(),
        });
    }
    out
}

/// Loads `service`'s settings the way its binary does, with the image's
/// environment and then the service's; panics on what the binary would
/// refuse, or on a directory that must persist and is not on a volume.
#[allow(clippy::result_large_err)]
fn check(image: &Image, service: &Service) {
    figment::Jail::expect_with(|jail| {
        jail.clear_env();
        for (k, v) in image.env.iter().chain(&service.env) {
            jail.set_env(k, v);
        }
        let on_a_volume = |dir: &Path| {
            let dir = image.workdir.join(dir);
            service
                .volume_targets
                .iter()
                .any(|target| dir.starts_with(target))
        };
        let name = &service.name;
        if service.binary == "callstream-gateway" {
            let settings = callstream_gateway::config::Settings::load(None)
                .unwrap_or_else(|e| panic!("{name}: the gateway refuses its settings: {e}"));
            assert!(
                on_a_volume(&settings.spool.dir),
                "{name}: the spool ({:?} from {:?}) is not on a volume",
                settings.spool.dir,
                image.workdir
            );
        } else {
            let settings = callstream_consumers::config::Settings::load(service.config.as_deref())
                .unwrap_or_else(|e| {
                    panic!("{name} ({}) refuses its settings: {e}", service.binary)
                });
            let store = &settings.recordings.store;
            if service.binary == "callstream-recordings" && store.kind == StoreKind::Local {
                assert!(
                    on_a_volume(&store.dir),
                    "{name}: the local recordings store ({:?}) is not on a volume",
                    store.dir
                );
            }
        }
        Ok(())
    });
}

#[test]
fn every_service_of_the_image_accepts_its_settings_and_keeps_its_state_on_volumes() {
    let image = image();
    assert_eq!(image.default_binary, "callstream-gateway");
    let services = services(&image);
    let binaries: Vec<&str> = services.iter().map(|s| s.binary.as_str()).collect();
    // Every long-running binary (replay is a one-off command).
    for expected in BINARIES.iter().filter(|b| **b != "callstream-replay") {
        assert!(
            binaries.contains(expected),
            "{expected} in compose: {binaries:?}"
        );
    }
    for service in &services {
        check(&image, service);
    }
}

/// The image alone (`docker run -e KAFKA_BOOTSTRAP_SERVERS=… callstream:local
/// callstream-<name>`): each binary takes the image's environment, and its
/// state directories are on the image's volumes.
#[test]
fn every_binary_accepts_the_image_environment_alone() {
    let image = image();
    for binary in BINARIES {
        let service = Service {
            name: format!("docker run {binary}"),
            binary: binary.to_string(),
            config: None,
            // The one setting the consumers require.
            env: vec![("KAFKA_BOOTSTRAP_SERVERS".into(), "kafka:9092".into())],
            volume_targets: image.volumes.clone(),
        };
        check(&image, &service);
    }
}

/// The compose file's `topics` job creates every topic callstream uses
/// (the consumers would create a missing output, but the CRM reads
/// `callstream.calls.v1` and can start before the store), compacted where
/// the topic is.
#[test]
fn the_topics_job_creates_every_topic() {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).expect("compose file");
    let doc: Value = serde_norway::from_str(&text).expect("compose YAML");
    let script: String = doc["services"]["topics"]["command"]
        .as_sequence()
        .expect("the topics job's command")
        .iter()
        .map(scalar)
        .collect();
    for topic in callstream_schemas::Topic::ALL {
        let name = topic.default_name();
        let line = script
            .lines()
            .map(str::trim)
            .find(|l| {
                l.strip_prefix("create ")
                    .and_then(|l| l.split_whitespace().next())
                    == Some(name)
            })
            .unwrap_or_else(|| panic!("the topics job does not create {name}"));
        if matches!(
            topic,
            callstream_schemas::Topic::DedupState | callstream_schemas::Topic::Calls
        ) {
            assert!(
                line.contains("cleanup.policy=compact"),
                "{name} must be compacted: {line}"
            );
        }
    }
}
