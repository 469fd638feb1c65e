//! Job templates: the same `batchscore run` command as one array job of each engine.

use serde_json::json;

/// The engines a template is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// A Kubernetes `batch/v1` Job with `completionMode: Indexed` (`JOB_COMPLETION_INDEX`).
    Kubernetes,
    /// An sbatch script with `--array=0-(N-1)` (`SLURM_ARRAY_TASK_ID`, `_COUNT`).
    Slurm,
    /// An AWS Batch `SubmitJob` input with `arrayProperties.size` (`AWS_BATCH_JOB_ARRAY_INDEX`,
    /// `_SIZE`), for `aws batch submit-job --cli-input-json`.
    AwsBatch,
}

/// What a job template needs; `command` is the whole `batchscore run ...` command line, with
/// the run id, window and shard count already pinned.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// The job's name: a DNS-1123 label (lowercase letters, digits, `-`), at most 63 characters.
    pub name: String,
    pub shards: u32,
    /// Shards running at once (at most `shards`).
    pub parallelism: u32,
    /// Retries of a shard that failed with a retry-worthy exit code.
    pub retries: u32,
    pub command: Vec<String>,
    /// Container image (Kubernetes).
    pub image: Option<String>,
    /// Job queue and job definition (AWS Batch).
    pub queue: Option<String>,
    pub job_definition: Option<String>,
}

/// A template that cannot be written as asked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("{0}")]
    Invalid(String),
}

/// Exit codes of `batchscore run` that retrying cannot fix (usage, failed keys over the
/// threshold, bad input): a shard that exits with one is not retried by the engine. Every other
/// nonzero code (75 storage unavailable, 130/143 stopped, 1) is retried.
pub const PERMANENT_EXIT_CODES: [u8; 3] = [2, 3, 4];

/// The job for `engine`, as the text its tools read.
pub fn template(engine: Engine, spec: &JobSpec) -> Result<String, TemplateError> {
    check(spec)?;
    match engine {
        Engine::Kubernetes => kubernetes(spec),
        Engine::Slurm => slurm(spec),
        Engine::AwsBatch => aws_batch(spec),
    }
}

fn invalid(reason: impl Into<String>) -> TemplateError {
    TemplateError::Invalid(reason.into())
}

fn check(spec: &JobSpec) -> Result<(), TemplateError> {
    let label = !spec.name.is_empty()
        && spec.name.len() <= 63
        && spec.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !spec.name.starts_with('-')
        && !spec.name.ends_with('-');
    if !label {
        return Err(invalid(format!(
            "job name `{}`: use 1-63 lowercase letters, digits and '-', not at either end",
            spec.name
        )));
    }
    if spec.shards == 0 || spec.parallelism == 0 {
        return Err(invalid("shards and parallelism must be at least 1"));
    }
    if spec.command.is_empty() {
        return Err(invalid("empty command"));
    }
    Ok(())
}

/// A YAML double-quoted scalar: JSON's string escapes are a subset of YAML's.
fn scalar(text: &str) -> String {
    json!(text).to_string()
}

/// The most pods an Indexed Job runs at once (`.spec.parallelism` is at most 10^5); shards
/// beyond it would only queue.
const KUBERNETES_MAX_PARALLELISM: u32 = 100_000;

fn kubernetes(spec: &JobSpec) -> Result<String, TemplateError> {
    if spec.shards > KUBERNETES_MAX_PARALLELISM {
        return Err(invalid(format!(
            "{} shards: a Kubernetes Indexed Job runs at most {KUBERNETES_MAX_PARALLELISM} pods at \
             once; use fewer shards",
            spec.shards
        )));
    }
    let image = spec.image.as_deref().ok_or_else(|| {
        invalid("a Kubernetes Job needs --image (an image with batchscore in it)")
    })?;
    let command: Vec<String> = spec.command.iter().map(|a| scalar(a)).collect();
    let permanent: Vec<String> = PERMANENT_EXIT_CODES.iter().map(u8::to_string).collect();
    Ok(format!(
        "# {name}: {shards} shards of one batchscore run as a Kubernetes Indexed Job.\n\
         # Written by `batchscore batch plan`; apply with `kubectl apply -f FILE`, then\n\
         # `kubectl wait --for=condition=complete job/{name}` or `batchscore status`.\n\
         # Each pod is one shard: batchscore reads JOB_COMPLETION_INDEX; the command line pins\n\
         # the shard count, the run id and the window, so every pod scores the same plan.\n\
         # Exit codes {permanent_list} are permanent (usage, failed keys, bad input): that index fails\n\
         # without retries; others (75 storage unavailable, 143 stopped) retry up to\n\
         # backoffLimitPerIndex times.\n\
         apiVersion: batch/v1\n\
         kind: Job\n\
         metadata:\n\
         \x20 name: {qname}\n\
         \x20 labels:\n\
         \x20   app.kubernetes.io/name: batchscore\n\
         spec:\n\
         \x20 completionMode: Indexed\n\
         \x20 completions: {shards}\n\
         \x20 parallelism: {parallelism}\n\
         \x20 backoffLimitPerIndex: {retries}\n\
         \x20 podFailurePolicy:\n\
         \x20   rules:\n\
         \x20     - action: FailIndex\n\
         \x20       onExitCodes:\n\
         \x20         containerName: batchscore\n\
         \x20         operator: In\n\
         \x20         values: [{permanent}]\n\
         \x20 template:\n\
         \x20   metadata:\n\
         \x20     labels:\n\
         \x20       app.kubernetes.io/name: batchscore\n\
         \x20   spec:\n\
         \x20     restartPolicy: Never\n\
         \x20     containers:\n\
         \x20       - name: batchscore\n\
         \x20         image: {image}\n\
         \x20         command: [{command}]\n",
        name = spec.name,
        qname = scalar(&spec.name),
        shards = spec.shards,
        parallelism = spec.parallelism.min(spec.shards),
        retries = spec.retries,
        permanent = permanent.join(", "),
        permanent_list = permanent.join(", "),
        image = scalar(image),
        command = command.join(", "),
    ))
}

/// A word for `sh`: single-quoted, with single quotes spliced in.
fn shell_word(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// Slurm's default `MaxArraySize`: array indexes run to 1000.
const SLURM_MAX_ARRAY_SIZE: u32 = 1001;

fn slurm(spec: &JobSpec) -> Result<String, TemplateError> {
    if spec.shards > SLURM_MAX_ARRAY_SIZE {
        return Err(invalid(format!(
            "{} shards: a Slurm job array has at most MaxArraySize - 1 = 1000 as its last index \
             by default ({SLURM_MAX_ARRAY_SIZE} tasks); use fewer shards",
            spec.shards
        )));
    }
    let command: Vec<String> = spec.command.iter().map(|a| shell_word(a)).collect();
    let permanent: Vec<String> = PERMANENT_EXIT_CODES.iter().map(u8::to_string).collect();
    Ok(format!(
        "#!/bin/sh\n\
         # {name}: {shards} shards of one batchscore run as a Slurm job array.\n\
         # Written by `batchscore batch plan`; submit with `sbatch FILE`.\n\
         # Each array task is one shard: batchscore reads SLURM_ARRAY_TASK_ID and\n\
         # SLURM_ARRAY_TASK_COUNT; the command line pins the run id and the window.\n\
         #SBATCH --job-name={name}\n\
         #SBATCH --array=0-{last}%{parallelism}\n\
         #SBATCH --requeue\n\
         # Slurm's MaxArraySize (1001 by default) bounds the array: ask the site for more shards.\n\
         # A task is retried here up to {retries} times on retry-worthy exit codes; codes\n\
         # {permanent} are permanent (usage, failed keys, bad input).\n\
         attempt=0\n\
         while :; do\n\
         \x20   {command} && exit 0\n\
         \x20   code=$?\n\
         \x20   case \"$code\" in {cases}) exit \"$code\" ;; esac\n\
         \x20   attempt=$((attempt + 1))\n\
         \x20   [ \"$attempt\" -gt {retries} ] && exit \"$code\"\n\
         \x20   sleep $((attempt * 30))\n\
         done\n",
        name = spec.name,
        shards = spec.shards,
        last = spec.shards - 1,
        parallelism = spec.parallelism.min(spec.shards),
        retries = spec.retries,
        permanent = permanent.join(", "),
        cases = permanent.join("|"),
        command = command.join(" "),
    ))
}

fn aws_batch(spec: &JobSpec) -> Result<String, TemplateError> {
    if !(2..=10_000).contains(&spec.shards) {
        return Err(invalid(format!(
            "an AWS Batch array job has 2 to 10,000 children, not {}: for one shard submit a \
             plain job",
            spec.shards
        )));
    }
    let (Some(queue), Some(definition)) = (&spec.queue, &spec.job_definition) else {
        return Err(invalid("an AWS Batch job needs --queue and --job-definition"));
    };
    // At most 5 exit conditions: the permanent codes exit, everything else retries.
    let mut on_exit: Vec<serde_json::Value> = PERMANENT_EXIT_CODES
        .iter()
        .map(|code| json!({"onExitCode": code.to_string(), "action": "EXIT"}))
        .collect();
    on_exit.push(json!({"onExitCode": "*", "action": "RETRY"}));
    let job = json!({
        "jobName": spec.name,
        "jobQueue": queue,
        "jobDefinition": definition,
        "arrayProperties": {"size": spec.shards},
        "retryStrategy": {"attempts": (spec.retries + 1).min(10), "evaluateOnExit": on_exit},
        "containerOverrides": {"command": spec.command},
    });
    serde_json::to_string_pretty(&job).map_err(|e| invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> JobSpec {
        JobSpec {
            name: "hourly".into(),
            shards: 4,
            parallelism: 8,
            retries: 3,
            command: vec![
                "batchscore".into(),
                "run".into(),
                "--input".into(),
                "it's \"odd\"".into(),
            ],
            image: Some("registry.example/batchscore:1".into()),
            queue: Some("q".into()),
            job_definition: Some("d".into()),
        }
    }

    #[test]
    fn names_counts_and_engines_are_checked() {
        for bad in ["", "Hourly", "-x", "x-", "a_b", &"a".repeat(64)] {
            let s = JobSpec { name: bad.into(), ..spec() };
            assert!(template(Engine::Slurm, &s).is_err(), "{bad:?}");
        }
        let one = JobSpec { shards: 1, ..spec() };
        assert!(template(Engine::AwsBatch, &one).unwrap_err().to_string().contains("2 to 10,000"));
        // Regression: a billion shards wrote a script for a billion array tasks.
        let slurm = |shards| template(Engine::Slurm, &JobSpec { shards, ..spec() });
        assert!(slurm(1_000_000_000).unwrap_err().to_string().contains("MaxArraySize"));
        assert!(slurm(1002).is_err());
        assert!(slurm(1001).unwrap().contains("--array=0-1000%"));
        assert!(template(Engine::Kubernetes, &JobSpec { image: None, ..spec() }).is_err());
        let huge = JobSpec { shards: 100_001, ..spec() };
        assert!(template(Engine::Kubernetes, &huge).unwrap_err().to_string().contains("100000"));
        assert!(template(Engine::AwsBatch, &JobSpec { queue: None, ..spec() }).is_err());
    }

    #[test]
    fn quoting_survives_hostile_arguments() {
        let k8s = template(Engine::Kubernetes, &spec()).unwrap();
        assert!(k8s.contains(r#""it's \"odd\"""#), "{k8s}");
        assert!(k8s.contains("parallelism: 4"), "parallelism is bounded by the shards");
        let slurm = template(Engine::Slurm, &spec()).unwrap();
        assert!(slurm.contains(r#"'it'\''s "odd"'"#), "{slurm}");
        assert!(slurm.contains("#SBATCH --array=0-3%4"), "{slurm}");
        let aws: serde_json::Value =
            serde_json::from_str(&template(Engine::AwsBatch, &spec()).unwrap()).unwrap();
        assert_eq!(aws["containerOverrides"]["command"][3], "it's \"odd\"");
        assert_eq!(aws["retryStrategy"]["evaluateOnExit"].as_array().unwrap().len(), 4);
    }
}
