//! `cargo xtask deploy-handlers`: builds the handlers and renders the `order-handlers` ConfigMap
//! that `k8s/` mounts at `HANDLERS_DIR` (components as `binaryData`, `handlers.toml` as `data`),
//! into `target/k8s/order-handlers.yaml`; applies it when a cluster is reachable. The running hosts
//! see kubelet swap the volume's `..data` link and hot-swap the changed handlers.

use xshell::{Shell, cmd};

use crate::{build_handlers, project_root};

/// A ConfigMap holds at most 1 MiB (etcd's object limit).
const CONFIGMAP_LIMIT: u64 = 1 << 20;

#[derive(clap::Args)]
pub struct Args {
    /// Namespace of the ConfigMap.
    #[arg(long, default_value = "metalmart")]
    namespace: String,
    /// Only render the manifest; never apply it.
    #[arg(long)]
    render_only: bool,
}

pub fn run(sh: &Shell, args: &Args) -> anyhow::Result<()> {
    build_handlers::run(sh, &build_handlers::Args::default())?;
    let root = project_root();
    let handlers = root.join("target/handlers");
    let total: u64 =
        std::fs::read_dir(&handlers)?.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum();
    anyhow::ensure!(
        total < CONFIGMAP_LIMIT,
        "target/handlers is {total} bytes; a ConfigMap holds at most {CONFIGMAP_LIMIT}: ship handlers in the image or a volume instead"
    );
    let yaml = render(sh, &handlers, &args.namespace)?;
    let out = root.join("target/k8s/order-handlers.yaml");
    std::fs::create_dir_all(out.parent().unwrap())?;
    std::fs::write(&out, format!("{yaml}\n"))?;
    println!("wrote {} ({total} bytes of handlers)", out.display());

    if args.render_only {
        return Ok(());
    }
    let reachable = cmd!(sh, "kubectl cluster-info --request-timeout=5s")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()
        .is_ok();
    if !reachable {
        println!("no cluster reachable; apply it later with: kubectl apply -f {}", out.display());
        return Ok(());
    }
    cmd!(sh, "kubectl apply -f {out}").run()?;
    println!("applied; hosts pick the new handlers up when kubelet refreshes the volume (about a minute)");
    Ok(())
}

/// The ConfigMap for every file in `dir`. kubectl puts non-UTF-8 files (the components) in
/// `binaryData` itself; `--dry-run=client` needs no cluster.
fn render(sh: &Shell, dir: &std::path::Path, namespace: &str) -> anyhow::Result<String> {
    Ok(cmd!(
        sh,
        "kubectl create configmap order-handlers --namespace {namespace} --from-file={dir} --dry-run=client --output=yaml"
    )
    .read()?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn components_render_as_binary_data_and_the_manifest_as_text() {
        // Not valid UTF-8, as a real component is not: kubectl puts such files in binaryData.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notifier.wasm"), b"\0asm\x0d\0\x01\0\xff").unwrap();
        std::fs::write(dir.path().join("handlers.toml"), "[[handler]]\nname = \"notifier\"\n").unwrap();
        let sh = xshell::Shell::new().unwrap();
        let yaml = super::render(&sh, dir.path(), "metalmart").unwrap();
        assert!(yaml.contains("kind: ConfigMap") && yaml.contains("name: order-handlers"), "{yaml}");
        assert!(yaml.contains("namespace: metalmart"), "{yaml}");
        let binary = yaml.split("binaryData:").nth(1).expect("binaryData");
        assert!(binary.contains("notifier.wasm: AGFzbQ0AAQD/"), "{yaml}");
        let data = yaml.split("\ndata:").nth(1).expect("data");
        assert!(data.contains("handlers.toml: |"), "{yaml}");
    }
}
