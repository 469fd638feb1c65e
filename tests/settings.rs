//! Settings: config files (with the first-use sample), and flag > environment > file precedence.

use crate::common::*;

fn scored_devices(stdout: &str) -> String {
    stdout.lines().find(|l| l.trim_start().starts_with("devices")).unwrap_or_default().to_string()
}

#[test]
fn config_sample_and_precedence_of_flags_environment_and_file() {
    let dir = tempdir();
    let config = dir.path().join("job.toml");
    std::fs::write(
        &config,
        r#"
[paths]
input = "data/readings"
registry = "registry"
output = "out"

[select]
devices = "0..5"

[run]
max_failed = "0"

[train]
n_estimators = 10

[sample]
generate_if_missing = true
dir = "data"
devices = 6
sensors = 3
rows_per_device = 100
seed = 1
"#,
    )
    .unwrap();
    let config = config.display().to_string();
    let run = |env: Option<&str>, flag: Option<&str>| {
        let mut cmd = crate::common::command();
        // Run from elsewhere: relative paths resolve against the config file.
        cmd.current_dir(std::env::temp_dir())
            .args(["--config", &config, "run"])
            .env_remove("BATCHSCORE_DEVICES");
        if let Some(devices) = flag {
            cmd.args(["--devices", devices]);
        }
        if let Some(devices) = env {
            cmd.env("BATCHSCORE_DEVICES", devices);
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        stdout
    };
    // First use generates the sample and trains it; the file selects 5 devices.
    let first = run(None, None);
    assert!(scored_devices(&first).contains("5 scored"), "{first}");
    assert!(dir.path().join("data/labels.parquet").exists());
    assert!(dir.path().join("registry/index.json").exists());
    // The environment beats the file, a flag beats both.
    assert!(scored_devices(&run(Some("0..3"), None)).contains("3 scored"));
    assert!(scored_devices(&run(Some("0..3"), Some("0..2"))).contains("2 scored"));
    let models = expect_code(&["--config", &config, "models", "show", "1"], 0);
    let view: serde_json::Value =
        serde_json::from_str(&models[models.find('{').unwrap()..]).unwrap();
    assert_eq!(view["meta"]["params"]["n_estimators"], 10, "{models}");
}

/// A model file of an earlier format is refused with the message that says what to do, and the
/// sample's models, when they are of an earlier format, are trained again on first use.
#[test]
fn models_of_an_older_format_are_refused_and_the_sample_retrained() {
    let dir = tempdir();
    let config = dir.path().join("job.toml");
    std::fs::write(
        &config,
        "[paths]\ninput = \"data/readings\"\nregistry = \"registry\"\noutput = \"out\"\n\n\
         [train]\nn_estimators = 5\n\n\
         [sample]\ngenerate_if_missing = true\ndir = \"data\"\ndevices = 3\nsensors = 2\n\
         rows_per_device = 50\nseed = 1\n",
    )
    .unwrap();
    let config = config.display().to_string();
    expect_code(&["--config", &config, "run"], 0);
    // Turn the registry into what a format 3 build left: each model its own object at
    // `models/KEY/VERSION.bsm`, in format 3 (the version field, bytes 8..12), and an index of
    // format 2 vouching for them.
    let registry = dir.path().join("registry");
    let index_path = registry.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let mut models = 0;
    for entry in index["models"].as_array_mut().unwrap() {
        let object = std::fs::read(registry.join(entry["path"].as_str().unwrap())).unwrap();
        let at = entry["offset"].as_u64().unwrap_or(0) as usize;
        let mut file = object[at..at + entry["size"].as_u64().unwrap() as usize].to_vec();
        file[8..12].copy_from_slice(&3u32.to_le_bytes());
        let (key, version) = (entry["key"].as_str().unwrap(), entry["version"].as_str().unwrap());
        let rel = format!("models/{key}/{version}.bsm");
        std::fs::create_dir_all(registry.join(&rel).parent().unwrap()).unwrap();
        std::fs::write(registry.join(&rel), &file).unwrap();
        entry["path"] = rel.into();
        entry["sha256"] = sha256_hex(&file).into();
        entry.as_object_mut().unwrap().remove("offset");
        models += 1;
    }
    index["format"] = 2.into();
    let text = serde_json::to_string_pretty(&index).unwrap();
    std::fs::write(&index_path, &text).unwrap();
    let generation = index["generation"].as_u64().unwrap();
    std::fs::write(registry.join(format!("_index/{generation:020}.json")), &text).unwrap();
    let _ = std::fs::remove_dir_all(registry.join("packs"));
    assert_eq!(models, 3);
    let refused = expect_code(&["--config", &config, "models", "verify"], 3);
    assert!(
        refused.contains("format version 3; this build reads version 4 (retrain or re-import"),
        "{refused}"
    );
    // The sample's models are retrained (new files), then the run scores every device.
    let again = expect_code(&["--config", &config, "run", "--run-id", "after-upgrade"], 0);
    assert!(again.contains("older build"), "{again}");
    assert!(scored_devices(&again).contains("3 scored"), "{again}");
    expect_code(&["--config", &config, "models", "verify"], 0);
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn unknown_config_keys_are_rejected() {
    let dir = tempdir();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[run]\nthreds = 2\n").unwrap();
    let stderr = expect_code(&["--config", &config.display().to_string(), "run"], 2);
    assert!(stderr.contains("threds"), "{stderr}");
}

#[test]
fn storage_options_follow_flag_env_file_precedence_and_hide_secrets() {
    let dir = tempdir();
    let config = dir.path().join("storage.toml");
    std::fs::write(
        &config,
        "[storage]\nmax_retries = 3\nmultipart_part_size = \"8MiB\"\n\n[storage.options]\n\
         azure_storage_account_name = \"fromfile\"\nazure_storage_account_key = \"FileSecret123\"\n\
         timeout = \"45s\"\n",
    )
    .unwrap();
    let config = config.display().to_string();
    let show = |env: &[(&str, &str)], flags: &[&str]| {
        let mut cmd = crate::common::command();
        cmd.args(["--config", &config]).args(flags).arg("config");
        cmd.env_remove("AZURE_STORAGE_ACCOUNT_NAME").env_remove("AZURE_STORAGE_ACCOUNT_KEY");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(!text.contains("FileSecret123") && !text.contains("EnvSecret456"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["storage"].clone()
    };
    let s = show(&[], &[]);
    assert_eq!(s["options"]["azure_storage_account_name"], "fromfile");
    assert_eq!(s["options"]["azure_storage_account_key"], "***");
    assert_eq!(s["options"]["timeout"], "45s");
    assert_eq!(s["max_retries"], 3);
    assert_eq!(s["multipart_part_size"], 8 << 20);
    let env =
        [("AZURE_STORAGE_ACCOUNT_NAME", "fromenv"), ("AZURE_STORAGE_ACCOUNT_KEY", "EnvSecret456")];
    assert_eq!(show(&env, &[])["options"]["azure_storage_account_name"], "fromenv");
    let flag = ["--storage-option", "azure_storage_account_name=fromflag"];
    assert_eq!(show(&env, &flag)["options"]["azure_storage_account_name"], "fromflag");

    // Unknown keys and malformed values are configuration errors naming the key, not the value.
    std::fs::write(
        dir.path().join("bad.toml"),
        "[storage.options]\nazure_storage_acount_key = \"S3cret\"\n",
    )
    .unwrap();
    let bad = dir.path().join("bad.toml").display().to_string();
    let text = expect_code(&["--config", &bad, "config"], 2);
    assert!(text.contains("azure_storage_acount_key") && !text.contains("S3cret"), "{text}");
    std::fs::write(dir.path().join("size.toml"), "[storage]\nmultipart_part_size = \"1KiB\"\n")
        .unwrap();
    let size = dir.path().join("size.toml").display().to_string();
    assert!(expect_code(&["--config", &size, "config"], 2).contains("multipart_part_size"));

    // The documented Azure config parses, and a secret from the environment stays hidden.
    let azure = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/azure.toml");
    let out = crate::common::command()
        .args(["--config", azure, "config"])
        .env("AZURE_STORAGE_ACCOUNT_KEY", "EnvSecret456")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("contosoiot") && !text.contains("EnvSecret456"));

    // The reference workload's config parses and selects the long layout and the reference
    // profile as CSV.
    let reference = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/reference.toml");
    let text = expect_code(&["--config", reference, "config"], 0);
    let view: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(view["columns"]["layout"], "long");
    assert_eq!(view["columns"]["sensor"], "Tag");
    assert_eq!(view["output"], serde_json::json!({"profile": "reference", "format": "csv"}));
}

/// A `batchscore.toml` in the current directory or a parent is the config, as uv and ruff
/// find theirs; `--config` names another; `--no-config` uses none; `config` says which.
#[test]
fn a_batchscore_toml_is_discovered_from_the_current_directory_up() {
    let f = fixture();
    let dir = tempdir();
    let out = dir.path().join("out");
    std::fs::write(
        dir.path().join("batchscore.toml"),
        format!(
            "[paths]\ninput = {:?}\nregistry = {:?}\noutput = \"out\"\n",
            f.readings(),
            f.registry()
        ),
    )
    .unwrap();
    let nested = dir.path().join("a/b");
    std::fs::create_dir_all(&nested).unwrap();
    let run =
        |args: &[&str]| crate::common::command().current_dir(&nested).args(args).output().unwrap();
    let shown = run(&["config"]);
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["config_file"], dir.path().join("batchscore.toml").display().to_string());
    let scored = run(&["-q", "run", "--devices", "0..3", "--run-id", "d"]);
    assert!(scored.status.success(), "{}", String::from_utf8_lossy(&scored.stderr));
    assert!(out.join("d/_SUCCESS").exists(), "the discovered file's output, relative to it");
    let none = run(&["--no-config", "run", "--devices", "0..3"]);
    assert_eq!(none.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&none.stderr).contains("missing --input"));
    let shown = run(&["--no-config", "config"]);
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert!(shown["config_file"].is_null());
}

/// The repository's own `batchscore.toml` points at the embedded sample, so the README's
/// command works typed in the repository root.
#[test]
fn the_repository_root_config_is_the_sample() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = crate::common::command().current_dir(root).arg("config").output().unwrap();
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["config_file"], format!("{root}/batchscore.toml"));
    assert_eq!(shown["paths"]["input"], format!("{root}/sample_data/readings"));
    assert_eq!(shown["paths"]["registry"], format!("{root}/sample_data/registry"));
}
