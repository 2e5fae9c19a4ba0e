//! Offline checks of `k8s/`, `Dockerfile` and `.mirrord/`: every overlay renders and validates
//! against the Kubernetes schemas, the mirrord resources against the operator's CRDs, the gke
//! overlay's KEDA ScaledObject against KEDA's CRD, the mirrord configs against mirrord's config
//! schema, and the pieces agree with each other and with the host's own configuration. No cluster
//! is needed; `kubectl` renders, `kubernetes-validate` (installed by `cargo xtask test`) validates.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::support::{mirrord, root};
use host::config::{Config, DispatchConfig};
use host::relay::RelayConfig;
use serde_json::{Value, json};

const OVERLAYS: [&str; 3] = ["k8s/base", "k8s/overlays/minikube", "k8s/overlays/gke"];
const KUBERNETES_VERSION: &str = "1.32.0";

/// `kubectl kustomize dir` as JSON values, one per object. Rendered once per test binary: every
/// test reads the same overlays.
fn render(dir: &str) -> Vec<Value> {
    static RENDERED: Mutex<BTreeMap<String, Vec<Value>>> = Mutex::new(BTreeMap::new());
    if let Some(objects) = RENDERED.lock().unwrap().get(dir) {
        return objects.clone();
    }
    let out = Command::new("kubectl")
        .args(["kustomize", &root().join(dir).display().to_string()])
        .output()
        .expect("kubectl runs (the Kubernetes tests need kubectl 1.32 with kustomize on PATH)");
    assert!(
        out.status.success(),
        "kubectl kustomize {dir} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let objects = yaml_documents(&String::from_utf8(out.stdout).unwrap());
    RENDERED.lock().unwrap().insert(dir.to_string(), objects.clone());
    objects
}

fn yaml_documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(doc).expect("valid YAML");
            serde_json::to_value(v).expect("YAML maps to JSON")
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn read_yaml(path: &str) -> Vec<Value> {
    yaml_documents(&std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}")))
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} rendered"))
}

fn container<'a>(deployment: &'a Value, name: &str) -> &'a Value {
    deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("Deployment has no container {name}"))
}

/// The container's env as name → entry.
fn env(container: &Value) -> BTreeMap<String, Value> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e.clone()))
        .collect()
}

fn plain_value(env: &BTreeMap<String, Value>, var: &str) -> String {
    let entry = env.get(var).unwrap_or_else(|| panic!("{var} is not set on the container"));
    assert!(entry.get("valueFrom").is_none(), "{var} must be a plain value, not {}", entry["valueFrom"]);
    entry["value"].as_str().unwrap_or_else(|| panic!("{var} has no plain value: {entry}")).to_string()
}

/// The directories of vendored schemas, each with a README that pins its files by sha256.
const SCHEMA_DIRS: [&str; 2] = ["k8s/schemas/mirrord", "k8s/schemas/keda"];

/// The schemas vendored under `k8s/schemas/mirrord/`.
fn mirrord_schema_dir() -> PathBuf {
    root().join(SCHEMA_DIRS[0])
}

/// The names of the files vendored in `dir` (one of [`SCHEMA_DIRS`]), its README aside, sorted.
fn vendored_files(dir: &str) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("read {dir}: {e}"))
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name != "README.md")
        .collect();
    files.sort();
    files
}

/// The path of the `kubernetes-validate` CLI: `KUBERNETES_VALIDATE` (set by `cargo xtask test`),
/// else PATH.
fn kubernetes_validate() -> String {
    std::env::var("KUBERNETES_VALIDATE").unwrap_or_else(|_| "kubernetes-validate".into())
}

/// Validates `objects` against the Kubernetes schemas; `Err` carries the validator's report.
fn validate_kubernetes(objects: &[Value]) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("objects.yaml");
    let text: String =
        objects.iter().map(|o| format!("---\n{}", serde_yaml::to_string(o).unwrap())).collect();
    std::fs::write(&file, text).unwrap();
    let out = Command::new(kubernetes_validate())
        .args(["--strict", "--quiet", "-k", KUBERNETES_VERSION])
        .arg(&file)
        .output()
        .expect(
            "kubernetes-validate runs (cargo xtask test installs it; or `pip install kubernetes-validate`)",
        );
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // A kind the validator has no schema for is only a warning to it (and exit 0): refuse it here,
    // so no object goes unvalidated. Custom resources go to `validate_custom_resource` instead.
    if out.status.success() && !report.contains("Couldn't find schema") { Ok(()) } else { Err(report) }
}

#[test]
fn every_overlay_renders_and_validates_against_the_kubernetes_schemas() {
    let schemas = crd_schemas();
    for dir in OVERLAYS {
        let objects = render(dir);
        assert!(objects.len() >= 10, "{dir} rendered only {} objects", objects.len());
        for o in &objects {
            let kind = o["kind"].as_str().unwrap();
            if kind != "Namespace" {
                assert_eq!(o["metadata"]["namespace"], "metalmart", "{kind} in {dir} is outside metalmart");
            }
        }
        // Custom resources (the gke overlay's ScaledObject) against their vendored CRDs, the rest
        // against Kubernetes' own schemas.
        let (custom, builtin): (Vec<Value>, Vec<Value>) =
            objects.into_iter().partition(|o| schemas.contains_key(&resource_key(o)));
        for object in &custom {
            if let Err(e) = validate_custom_resource(&schemas, object) {
                panic!("{} in {dir} does not validate against its CRD:\n{e}", object["kind"]);
            }
        }
        if let Err(report) = validate_kubernetes(&builtin) {
            panic!("{dir} does not validate against Kubernetes {KUBERNETES_VERSION}:\n{report}");
        }
    }
}

#[test]
fn the_kubernetes_validator_rejects_a_broken_object() {
    // Guards the test above against a validator that accepts anything.
    let mut deployment = find(&render("k8s/base"), "Deployment", "order-host").clone();
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["portt"] =
        json!(8080);
    let report = validate_kubernetes(&[deployment]).expect_err("a misspelt field is refused");
    assert!(report.contains("portt"), "the report names the field: {report}");
    // And a kind it has no schema for is refused, not skipped.
    let unknown = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}});
    let report = validate_kubernetes(&[unknown]).expect_err("a kind without a schema is refused");
    assert!(report.contains("Widget"), "the report names the kind: {report}");
}

#[test]
fn overlays_differ_where_they_should() {
    let minikube = render("k8s/overlays/minikube");
    let gke = render("k8s/overlays/gke");
    let replicas = |o: &[Value]| find(o, "Deployment", "order-host")["spec"]["replicas"].as_i64();
    assert_eq!(replicas(&minikube), Some(1));
    // On GKE the HPA that KEDA creates owns the count; minikube has no KEDA and no ScaledObject.
    assert_eq!(replicas(&gke), None, "the ScaledObject's HPA owns replicas on GKE");
    let scaled = find(&gke, "ScaledObject", "order-host");
    assert_eq!(scaled["spec"]["maxReplicaCount"], 3, "one replica per partition of the consumed topics");
    let base = render("k8s/base");
    assert!(!minikube.iter().chain(&base).any(|o| o["kind"] == "ScaledObject"), "KEDA is GKE's only");
    assert_eq!(find(&minikube, "Service", "order-host")["spec"]["type"], "NodePort");
    find(&gke, "Ingress", "order-host");
    for (objects, class) in [(&minikube, "standard"), (&gke, "premium-rwo")] {
        for name in ["postgres", "kafka"] {
            let set = find(objects, "StatefulSet", name);
            assert_eq!(set["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"], class, "{name}");
        }
    }
    let image = |o: &[Value]| container(find(o, "Deployment", "order-host"), "order-host")["image"].clone();
    assert_eq!(image(&minikube), "order-host:dev");
    assert!(image(&gke).as_str().unwrap().contains("docker.pkg.dev/"), "gke pulls from a registry");
}

/// `(apiVersion, kind)` of an object: the key of [`crd_schemas`].
fn resource_key(object: &Value) -> (String, String) {
    (object["apiVersion"].as_str().unwrap().to_string(), object["kind"].as_str().unwrap().to_string())
}

/// `(group/version, kind)` → the CRD's openAPIV3Schema, for every served version of every CRD in
/// the vendored YAML files (the mirrord operator's and KEDA's).
fn crd_schemas() -> BTreeMap<(String, String), Value> {
    let mut schemas = BTreeMap::new();
    for dir in SCHEMA_DIRS {
        for file in vendored_files(dir).iter().filter(|f| f.ends_with(".yaml")) {
            for crd in read_yaml(&format!("{dir}/{file}")) {
                assert_eq!(crd["kind"], "CustomResourceDefinition", "{dir}/{file}");
                let group = crd["spec"]["group"].as_str().unwrap();
                let kind = crd["spec"]["names"]["kind"].as_str().unwrap().to_string();
                for version in crd["spec"]["versions"].as_array().unwrap() {
                    if version["served"] == true {
                        let api = format!("{group}/{}", version["name"].as_str().unwrap());
                        schemas.insert((api, kind.clone()), version["schema"]["openAPIV3Schema"].clone());
                    }
                }
            }
        }
    }
    schemas
}

/// Validates a custom resource against its CRD's schema (OpenAPI v3, close to JSON Schema draft 4;
/// these resources need neither `nullable` nor `x-kubernetes-int-or-string`, and the CEL rules of
/// `x-kubernetes-validations` are not run: the tests check what those rules say themselves).
/// Fields the schema does not declare are refused too: the API server would drop them without a
/// word (CRD schemas prune, they do not say `additionalProperties: false`), and `--strict`
/// refuses them for the built-in kinds.
fn validate_custom_resource(
    schemas: &BTreeMap<(String, String), Value>,
    object: &Value,
) -> Result<(), String> {
    let key = resource_key(object);
    let schema = schemas.get(&key).ok_or_else(|| format!("no served CRD for {key:?}"))?;
    let validator = jsonschema::draft4::new(schema).map_err(|e| format!("CRD schema for {key:?}: {e}"))?;
    let mut errors: Vec<String> =
        validator.iter_errors(object).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    undeclared_fields(schema, object, "", &mut errors);
    if errors.is_empty() { Ok(()) } else { Err(errors.join("\n")) }
}

/// Adds to `out` every field of `value` (at JSON pointer `path`) that `schema` does not declare,
/// the way the API server's pruning reads a structural schema. The root's `apiVersion`, `kind`
/// and `metadata` are the API server's own.
fn undeclared_fields(schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    if schema["x-kubernetes-preserve-unknown-fields"] == true {
        return;
    }
    match value {
        Value::Object(fields) => {
            for (name, field) in fields {
                if path.is_empty() && ["apiVersion", "kind", "metadata"].contains(&name.as_str()) {
                    continue;
                }
                let at = format!("{path}/{name}");
                match (schema["properties"].get(name), &schema["additionalProperties"]) {
                    (Some(declared), _) => undeclared_fields(declared, field, &at, out),
                    (None, Value::Object(_)) => {
                        undeclared_fields(&schema["additionalProperties"], field, &at, out)
                    }
                    (None, Value::Bool(true)) => {}
                    (None, _) => out.push(format!("{at} is not in the CRD schema (the API server drops it)")),
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                undeclared_fields(&schema["items"], item, &format!("{path}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// `object` changed by `edit`, validated against its CRD: for the checks that the schema refuses.
fn validate_edited(
    schemas: &BTreeMap<(String, String), Value>,
    object: &Value,
    edit: impl FnOnce(&mut Value),
) -> Result<(), String> {
    let mut object = object.clone();
    edit(&mut object);
    validate_custom_resource(schemas, &object)
}

const MIRRORD_RESOURCES: [&str; 2] =
    ["k8s/base/infrastructure/mirrord-kafka.yaml", "k8s/base/infrastructure/mirrord-split-config.yaml"];

/// The objects of both mirrord resource files, legacy generation first.
fn mirrord_resources() -> Vec<Value> {
    MIRRORD_RESOURCES.iter().flat_map(|f| read_yaml(f)).collect()
}

#[test]
fn mirrord_resources_validate_against_the_operator_crds() {
    let schemas = crd_schemas();
    let mut kinds = BTreeSet::new();
    for file in MIRRORD_RESOURCES {
        for object in read_yaml(file) {
            if let Err(e) = validate_custom_resource(&schemas, &object) {
                panic!("{} in {file} does not validate:\n{e}", object["kind"]);
            }
            kinds.insert(object["kind"].as_str().unwrap().to_string());
        }
    }
    let want = [
        "MirrordKafkaClientConfig",
        "MirrordKafkaTopicsConsumer",
        "MirrordPropertyList",
        "MirrordSplitConfig",
    ];
    assert_eq!(kinds, want.iter().map(|k| k.to_string()).collect());
    // The client config lives with the operator; everything else with the workload.
    for object in &mirrord_resources() {
        let want = if object["kind"] == "MirrordKafkaClientConfig" { "mirrord" } else { "metalmart" };
        assert_eq!(object["metadata"]["namespace"], want, "namespace of {}", object["kind"]);
    }
    // The kustomization applies the legacy generation.
    let applied: Vec<String> = yaml_to_kinds(&render("k8s/base/infrastructure"));
    assert_eq!(applied, ["MirrordKafkaClientConfig", "MirrordKafkaTopicsConsumer"]);

    // And the CRD schemas do refuse things: a topic without groupIdSources.
    let mut consumer = read_yaml(MIRRORD_RESOURCES[0])[1].clone();
    consumer["spec"]["topics"][0].as_object_mut().unwrap().remove("groupIdSources");
    validate_custom_resource(&schemas, &consumer).expect_err("groupIdSources is required");
}

fn yaml_to_kinds(objects: &[Value]) -> Vec<String> {
    objects.iter().map(|o| o["kind"].as_str().unwrap().to_string()).collect()
}

fn mirrord_configs() -> Vec<(String, String)> {
    let configs = mirrord::configs();
    assert!(configs.len() >= 2, "expected order-host.json and a Kafka-only variant, found {configs:?}");
    configs
}

#[test]
fn mirrord_configs_validate_against_the_config_schema() {
    let schema = read_json(&mirrord_schema_dir().join("mirrord-schema.json"));
    let validator = jsonschema::draft202012::new(&schema).expect("mirrord's schema compiles");
    let vars = BTreeMap::from([("MIRRORD_EMAIL_PATTERN", mirrord::SESSION_EMAIL_PATTERN)]);
    for (name, text) in mirrord_configs() {
        for (what, text) in [("as written", text.clone()), ("rendered", mirrord::render(&text, "s1", &vars))]
        {
            let config: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} ({what}) is not JSON: {e}"));
            let errors: Vec<String> =
                validator.iter_errors(&config).map(|e| format!("{e} at {}", e.instance_path())).collect();
            assert!(errors.is_empty(), "{name} ({what}) does not validate:\n{}", errors.join("\n"));
        }
        let config: Value = serde_json::from_str(&mirrord::render(&text, "s1", &vars)).unwrap();
        assert_eq!(config["operator"], true, "{name}: queue splitting needs the operator");
        assert!(config["feature"]["env"].is_object() || config["feature"]["env"] == true, "{name}: env on");
        let incoming = &config["feature"]["network"]["incoming"];
        // Mirroring would replay every POST against the local host too: duplicate orders.
        assert_ne!(incoming, "mirror", "{name}");
        assert_ne!(incoming["mode"], "mirror", "{name}");
        if incoming["mode"] == "steal" {
            let filter = incoming["http_filter"]["header_filter"].as_str().unwrap_or_default();
            assert!(
                filter.contains("mirrord-session=s1"),
                "{name}: steal only this session's requests: {filter}"
            );
        }
        for (id, split) in config["feature"]["split_queues"].as_object().unwrap() {
            assert_eq!(split["queue_type"], "Kafka", "{name} {id}");
            let filter = split["message_filter"]["customer_email"].as_str().unwrap();
            let re =
                regex::Regex::new(filter).unwrap_or_else(|e| panic!("{name} {id}: bad regex {filter}: {e}"));
            for email in ["alice.dev@metalbear.com", "alice.dev+x1@metalbear.com"] {
                assert!(re.is_match(email), "{name} {id}: {filter} misses {email}");
            }
            // Anchored: an email merely containing the pattern is someone else's.
            for email in
                ["malice.dev@metalbear.com", "alice.dev@metalbear.com.evil.io", "alicexdev@metalbear.com"]
            {
                assert!(!re.is_match(email), "{name} {id}: {filter} wrongly takes {email}");
            }
        }
    }
    // The schema does refuse things.
    let bad = json!({"feature": {"network": {"incoming": "borrow"}}});
    assert!(!validator.is_valid(&bad));
}

/// The vendored schemas as published (mirrord 3.250.0, operator 3.187.0, KEDA 2.20.2), each
/// pinned by sha256 on its line of its directory's README: an edit to a copy, or a file added
/// without a pin, shows up here, and the READMEs say where a new release's schemas come from.
#[test]
fn vendored_schemas_are_the_pinned_releases() {
    for dir in SCHEMA_DIRS {
        let readme = std::fs::read_to_string(root().join(dir).join("README.md")).unwrap();
        let files = vendored_files(dir);
        assert!(!files.is_empty(), "{dir} vendors nothing");
        for file in files {
            let sha = host::runtime::sha256_hex(&std::fs::read(root().join(dir).join(&file)).unwrap());
            assert!(
                readme.lines().any(|line| line.contains(&format!("`{file}`")) && line.contains(&sha)),
                "{dir}/{file} (sha256 {sha}) is not the release the README pins"
            );
        }
    }
}

/// The partition count the topics Job creates every topic with (its `--partitions N`).
fn topic_partitions(job: &Value) -> u64 {
    let script = job["spec"]["template"]["spec"]["containers"][0]["args"][0].as_str().unwrap();
    let counts: BTreeSet<u64> = script
        .split("--partitions ")
        .skip(1)
        .map(|rest| {
            let n = rest.split_whitespace().next().unwrap_or_default();
            n.parse().unwrap_or_else(|e| panic!("--partitions {n}: {e}"))
        })
        .collect();
    assert_eq!(counts.len(), 1, "one partition count for every topic: {script}");
    counts.into_iter().next().unwrap()
}

#[test]
fn the_scaled_object_validates_against_the_keda_crd() {
    let schemas = crd_schemas();
    let scaled = find(&render("k8s/overlays/gke"), "ScaledObject", "order-host").clone();
    if let Err(e) = validate_custom_resource(&schemas, &scaled) {
        panic!("the ScaledObject does not validate against KEDA's CRD:\n{e}");
    }
    // And the CRD schema does refuse things.
    validate_edited(&schemas, &scaled, |o| {
        o["spec"]["triggers"][0].as_object_mut().unwrap().remove("type");
    })
    .expect_err("a trigger needs a type");
    validate_edited(&schemas, &scaled, |o| {
        o["spec"]["scaleTargetRef"].as_object_mut().unwrap().remove("name");
    })
    .expect_err("scaleTargetRef needs a name");
    // Trigger metadata is strings only: a YAML `false` without quotes is refused.
    validate_edited(&schemas, &scaled, |o| {
        o["spec"]["triggers"][0]["metadata"]["allowIdleConsumers"] = json!(false);
    })
    .expect_err("metadata values are strings");
    // A misspelt field passes JSON Schema, but the API server would drop it: refused too.
    let report = validate_edited(&schemas, &scaled, |o| {
        o["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
            ["stabilisationWindowSeconds"] = json!(600);
    })
    .expect_err("an undeclared field is refused");
    assert!(report.contains("stabilisationWindowSeconds"), "the report names the field: {report}");
}

#[test]
fn the_scaled_object_scales_the_host_on_its_own_group_and_topics() {
    let objects = render("k8s/overlays/gke");
    let spec = &find(&objects, "ScaledObject", "order-host")["spec"];

    // It scales the Deployment rendered with it, which leaves its replica count to the HPA.
    let target = &spec["scaleTargetRef"];
    assert_eq!(target["apiVersion"], "apps/v1");
    assert_eq!(target["kind"], "Deployment");
    let deployment = find(&objects, "Deployment", target["name"].as_str().unwrap());
    assert!(
        deployment["spec"].get("replicas").is_none(),
        "kubectl apply would reset the HPA's count to {} every time",
        deployment["spec"]["replicas"]
    );
    let vars = env(container(deployment, "order-host"));

    // One trigger per consumed topic, on the host's group and broker, for topics the Job creates.
    let job = find(&objects, "Job", "kafka-topics");
    let created: BTreeSet<String> =
        plain_value(&env(&job["spec"]["template"]["spec"]["containers"][0]), "TOPICS")
            .split_whitespace()
            .map(String::from)
            .collect();
    let consumed: BTreeSet<String> =
        ["KAFKA_TOPIC", "KAFKA_STATUS_TOPIC"].iter().map(|v| plain_value(&vars, v)).collect();
    let mut watched = BTreeSet::new();
    for trigger in spec["triggers"].as_array().unwrap() {
        let m = &trigger["metadata"];
        let topic = m["topic"].as_str().expect("every trigger names its topic");
        assert_eq!(trigger["type"], "kafka", "{topic}");
        assert_eq!(m["consumerGroup"], plain_value(&vars, "KAFKA_GROUP_ID").as_str(), "{topic}");
        assert_eq!(m["bootstrapServers"], plain_value(&vars, "KAFKA_BROKERS").as_str(), "{topic}");
        assert!(created.contains(topic), "{topic} is not one of the topics the Job creates: {created:?}");
        // The scaler caps its recommendation at the topic's partitions.
        assert_eq!(m["allowIdleConsumers"], "false", "{topic}");
        // The host's auto.offset.reset: an uncommitted partition is lag from its first record.
        assert_eq!(m["offsetResetPolicy"], "earliest", "{topic}");
        let threshold: u64 = m["lagThreshold"].as_str().unwrap().parse().unwrap();
        assert!(threshold > 0, "{topic}: KEDA refuses a lagThreshold of 0");
        assert!(watched.insert(topic.to_string()), "{topic} has two triggers");
    }
    assert_eq!(watched, consumed, "the triggers watch exactly the topics the host consumes");

    // From 1 (the pods serve the API too) to no more replicas than a topic has partitions.
    let min = spec["minReplicaCount"].as_u64().unwrap();
    let max = spec["maxReplicaCount"].as_u64().unwrap();
    let partitions = topic_partitions(job);
    assert!(min >= 1, "scaling to zero would take the API down");
    assert!(min <= max, "the CRD's CEL rule: minReplicaCount {min} > maxReplicaCount {max}");
    assert!(max <= partitions, "maxReplicaCount {max} > {partitions} partitions: the rest would sit idle");

    // Every change is an eager rebalance: scale down one replica at a time, after a window no
    // shorter than the HPA's default. KEDA's release manifests bound both windows to 0..=3600
    // (config/crd/patches/scaledobject_patch.yaml), which the vendored base CRD does not carry.
    let behavior = &spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"];
    let window = |direction: &str| behavior[direction]["stabilizationWindowSeconds"].as_u64().unwrap();
    assert!(window("scaleUp") <= 3600 && window("scaleDown") <= 3600);
    assert!(window("scaleDown") >= 300, "scale-down window {} s", window("scaleDown"));
    let policies = behavior["scaleDown"]["policies"].as_array().unwrap();
    assert!(!policies.is_empty(), "no scale-down policy: the HPA may remove every replica at once");
    for policy in policies {
        assert_eq!((&policy["type"], &policy["value"]), (&json!("Pods"), &json!(1)), "{policy}");
    }
}

/// `(container, variable)` pairs a mirrord resource names as sources.
type Sources = Vec<(String, String)>;

/// `(topic id, nameSources, groupIdSources)` from both generations.
fn split_sources() -> Vec<(String, Sources, Sources)> {
    let mut out = Vec::new();
    for object in read_yaml(MIRRORD_RESOURCES[0]) {
        if object["kind"] != "MirrordKafkaTopicsConsumer" {
            continue;
        }
        assert_eq!(object["spec"]["consumerKind"], "Deployment");
        assert_eq!(object["spec"]["consumerName"], "order-host");
        for topic in object["spec"]["topics"].as_array().unwrap() {
            let vars = |field: &str| -> Vec<(String, String)> {
                topic[field]
                    .as_array()
                    .unwrap_or_else(|| panic!("{field} must be set"))
                    .iter()
                    .map(|s| {
                        let d = &s["directEnvVar"];
                        (d["container"].as_str().unwrap().into(), d["variable"].as_str().unwrap().into())
                    })
                    .collect()
            };
            out.push((topic["id"].as_str().unwrap().into(), vars("nameSources"), vars("groupIdSources")));
        }
    }
    for object in read_yaml(MIRRORD_RESOURCES[1]) {
        if object["kind"] != "MirrordSplitConfig" {
            continue;
        }
        assert_eq!(object["spec"]["targetRef"]["kind"], "Deployment");
        assert_eq!(object["spec"]["targetRef"]["name"], "order-host");
        for queue in object["spec"]["queues"].as_array().unwrap() {
            let vars = |field: &str| -> Vec<(String, String)> {
                let sources =
                    queue["appConfig"][field].as_array().unwrap_or_else(|| panic!("{field} must be set"));
                sources
                    .iter()
                    .flat_map(|s| {
                        let containers = s["containers"].as_array().expect("sources name their container");
                        containers
                            .iter()
                            .map(|c| (c.as_str().unwrap().into(), s["env"].as_str().unwrap().into()))
                    })
                    .collect()
            };
            out.push((queue["id"].as_str().unwrap().into(), vars("topic"), vars("groupId")));
        }
    }
    out
}

#[test]
fn split_sources_are_plain_values_on_the_named_container() {
    let published: BTreeSet<&str> =
        ["ORDER_CREATED_TOPIC", "STATUS_UPDATED_TOPIC", "DEAD_LETTER_TOPIC"].into();
    for dir in OVERLAYS {
        let objects = render(dir);
        let deployment = find(&objects, "Deployment", "order-host");
        for (id, names, groups) in split_sources() {
            assert!(
                !names.is_empty() && !groups.is_empty(),
                "{id}: topic and group sources are both required"
            );
            for (container_name, var) in names.iter().chain(&groups) {
                plain_value(&env(container(deployment, container_name)), var);
            }
            for (_, var) in &names {
                assert!(!published.contains(var.as_str()), "{id}: {var} is what the producer publishes to");
            }
        }
    }
    // Unsplit, the host consumes exactly what it publishes.
    let objects = render("k8s/base");
    let vars = env(container(find(&objects, "Deployment", "order-host"), "order-host"));
    assert_eq!(plain_value(&vars, "KAFKA_TOPIC"), plain_value(&vars, "ORDER_CREATED_TOPIC"));
    assert_eq!(plain_value(&vars, "KAFKA_STATUS_TOPIC"), plain_value(&vars, "STATUS_UPDATED_TOPIC"));
    // And the host keeps publishing to the real topics when the operator rewrites the consumed ones.
    let split = Config::from_lookup(|k| match k {
        "KAFKA_TOPIC" => Some("mirrord-tmp-abc-fallback-order.created".into()),
        "KAFKA_STATUS_TOPIC" => Some("mirrord-tmp-abc-fallback-order.status-updated".into()),
        _ => vars.get(k).and_then(|e| e["value"].as_str()).map(str::to_string),
    })
    .unwrap();
    assert_eq!(split.topics.order_created, "order.created");
    assert_eq!(split.topics.status_updated, "order.status-updated");
}

#[test]
fn topic_ids_agree_between_the_crds_and_the_mirrord_configs() {
    let sources = split_sources();
    let legacy: BTreeSet<String> = sources.iter().take(2).map(|s| s.0.clone()).collect();
    let current: BTreeSet<String> = sources.iter().skip(2).map(|s| s.0.clone()).collect();
    let want: BTreeSet<String> = ["order-created", "order-status-updated"].map(String::from).into();
    assert_eq!(legacy, want, "MirrordKafkaTopicsConsumer ids");
    assert_eq!(current, want, "MirrordSplitConfig ids");
    for (name, text) in mirrord_configs() {
        let config: Value = serde_json::from_str(&text).unwrap();
        let ids: BTreeSet<String> =
            config["feature"]["split_queues"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(ids, want, "{name} splits other ids than the CRDs define");
        assert_eq!(config["target"]["namespace"], "metalmart", "{name}");
        assert_eq!(config["target"]["path"], "deployment/order-host/container/order-host", "{name}");
    }
    // Both generations point at the same variables for the same id.
    for id in &want {
        let per_id: Vec<_> = sources.iter().filter(|s| &s.0 == id).map(|s| (&s.1, &s.2)).collect();
        assert_eq!(per_id.len(), 2);
        assert_eq!(per_id[0], per_id[1], "{id}: the two generations disagree");
    }
}

#[test]
fn the_deployment_sets_everything_the_host_reads() {
    // Every variable the host's config looks up, recorded by running the real parser.
    let read = std::cell::RefCell::new(BTreeSet::new());
    Config::from_lookup(|k| {
        read.borrow_mut().insert(k.to_string());
        None
    })
    .unwrap();
    let read = read.into_inner();
    assert!(read.len() >= 15, "the recording saw only {read:?}");
    let secret_backed: BTreeSet<&str> = ["DATABASE_URL", "ADMIN_TOKEN"].into();
    for dir in OVERLAYS {
        let objects = render(dir);
        let deployment = find(&objects, "Deployment", "order-host");
        let vars = env(container(deployment, "order-host"));
        for var in &read {
            if secret_backed.contains(var.as_str()) {
                assert!(vars.contains_key(var), "{dir}: {var} is not set");
            } else {
                plain_value(&vars, var);
            }
        }
        // The password comes from the Secret, spliced in by Kubernetes, never written here.
        let url = plain_value(&vars, "DATABASE_URL");
        assert!(url.contains("$(POSTGRES_PASSWORD)"), "{dir}: DATABASE_URL = {url}");
        let password = &vars["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"];
        assert_eq!(password["name"], "postgres-credentials");
        // Kubernetes only expands $(VAR) for variables defined earlier in the list.
        assert!(container_env_order_ok(deployment), "{dir}: POSTGRES_PASSWORD must come before DATABASE_URL");
        let admin = &vars["ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"];
        assert_eq!(admin["optional"], true, "{dir}: no Secret means the admin API is off, not a stuck pod");
        // Config parses what the manifest sets.
        Config::from_lookup(|k| vars.get(k).and_then(|e| e["value"].as_str()).map(str::to_string))
            .unwrap_or_else(|e| panic!("{dir}: the Deployment's env does not parse: {e:#}"));
    }
}

/// Whether POSTGRES_PASSWORD precedes DATABASE_URL in the container's (ordered) env list.
fn container_env_order_ok(deployment: &Value) -> bool {
    let names: Vec<&str> = container(deployment, "order-host")["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    let at = |n: &str| names.iter().position(|x| *x == n).unwrap();
    at("POSTGRES_PASSWORD") < at("DATABASE_URL")
}

#[test]
fn the_pod_is_locked_down_and_shuts_down_within_its_grace_period() {
    for dir in OVERLAYS {
        let objects = render(dir);
        let deployment = find(&objects, "Deployment", "order-host");
        let pod = &deployment["spec"]["template"]["spec"];
        let c = container(deployment, "order-host");
        let vars = env(c);

        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{dir}");
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true, "{dir}");
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false, "{dir}");

        // SIGTERM comes after preStop; then the dispatcher drains, then the relay.
        let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
        let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"].as_u64().unwrap_or(0);
        let drains = DispatchConfig::default().drain_timeout + RelayConfig::default().drain_timeout;
        assert!(
            grace > pre_stop + drains.as_secs() + 5,
            "{dir}: {grace}s grace < {pre_stop}s + {drains:?} + margin"
        );

        // Probes hit the host's routes on the port it listens on.
        let port = plain_value(&vars, "HTTP_ADDR").rsplit(':').next().unwrap().parse::<u64>().unwrap();
        assert_eq!(c["ports"][0]["containerPort"], port);
        assert_eq!(c["ports"][0]["name"], "http");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");

        // Handlers come from the ConfigMap at HANDLERS_DIR; the compile cache needs a writable
        // volume because the root filesystem is read-only.
        let mounts: BTreeMap<&str, &Value> = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["mountPath"].as_str().unwrap(), m))
            .collect();
        let volumes: BTreeMap<&str, &Value> =
            pod["volumes"].as_array().unwrap().iter().map(|v| (v["name"].as_str().unwrap(), v)).collect();
        let volume_at = |path: &str| -> &Value {
            let mount = mounts.get(path).unwrap_or_else(|| panic!("{dir}: nothing is mounted at {path}"));
            volumes[mount["name"].as_str().unwrap()]
        };
        assert_eq!(volume_at(&plain_value(&vars, "HANDLERS_DIR"))["configMap"]["name"], "order-handlers");
        assert!(volume_at(&plain_value(&vars, "HANDLER_CACHE_DIR"))["emptyDir"].is_object(), "{dir}");
        assert!(volume_at("/tmp")["emptyDir"].is_object(), "{dir}");

        // The Dockerfile's runtime user is the one the pod runs as.
        let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
        let user =
            dockerfile.lines().rev().find_map(|l| l.strip_prefix("USER ")).expect("Dockerfile sets USER");
        assert_eq!(user.split(':').next().unwrap(), pod["securityContext"]["runAsUser"].to_string(), "{dir}");
    }
}

#[test]
fn kafka_topics_and_addresses_line_up() {
    let objects = render("k8s/base");
    let vars = env(container(find(&objects, "Deployment", "order-host"), "order-host"));
    let brokers = plain_value(&vars, "KAFKA_BROKERS");

    let kafka = find(&objects, "StatefulSet", "kafka");
    let kafka_env = env(container(kafka, "kafka"));
    assert_eq!(plain_value(&kafka_env, "KAFKA_ADVERTISED_LISTENERS"), format!("PLAINTEXT://{brokers}"));
    assert_eq!(plain_value(&kafka_env, "KAFKA_MIN_INSYNC_REPLICAS"), "1");
    assert_eq!(plain_value(&kafka_env, "KAFKA_PROCESS_ROLES"), "broker,controller", "single-node KRaft");
    assert_eq!(brokers, "kafka.metalmart.svc.cluster.local:9092");

    // The Job creates exactly the topics the host publishes to, with 3 partitions.
    let job = find(&objects, "Job", "kafka-topics");
    let job_env = env(&job["spec"]["template"]["spec"]["containers"][0]);
    let created: BTreeSet<String> =
        plain_value(&job_env, "TOPICS").split_whitespace().map(String::from).collect();
    let published: BTreeSet<String> = ["ORDER_CREATED_TOPIC", "STATUS_UPDATED_TOPIC", "DEAD_LETTER_TOPIC"]
        .iter()
        .map(|v| plain_value(&vars, v))
        .collect();
    assert_eq!(created, published);
    assert_eq!(plain_value(&job_env, "BOOTSTRAP"), brokers);
    let script = job["spec"]["template"]["spec"]["containers"][0]["args"][0].as_str().unwrap();
    assert!(script.contains("--partitions 3"), "{script}");

    // The operator's clients reach the same broker.
    for object in &mirrord_resources() {
        if let Some(props) = object["spec"]["properties"].as_array() {
            let bootstrap =
                props.iter().find(|p| p["name"] == "bootstrap.servers").expect("bootstrap.servers");
            assert_eq!(bootstrap["value"], brokers.as_str(), "{}", object["kind"]);
        }
    }
}
