//! The client/server split over files: `keygen`, `encrypt` (client), `evaluate` (model
//! holder), `decrypt` (client). Every file is read only after its size is checked against
//! what the plan allows.

use crate::import::{load_model, ImportArgs};
use crate::DataArgs;
use anyhow::{bail, Context as _, Result};
use blindfold_ckks::serialize::{read_header, WireObject};
use blindfold_ckks::Ciphertext;
use blindfold_ckks::SecretKey;
use blindfold_data::Split;
use blindfold_nn::compile::ChainOptions;
use blindfold_nn::{argmax, ArchSpec};
use blindfold_protocol::{Client, CompiledModel, KeyId, Message, ModelHolder, PlanInfo};
use std::path::Path;
use std::time::Instant;

fn arch_of(model_or_arch: &str, import: &ImportArgs) -> Result<ArchSpec> {
    if ArchSpec::BUILTIN.contains(&model_or_arch) {
        return Ok(ArchSpec::builtin(model_or_arch)?);
    }
    Ok(load_model(Path::new(model_or_arch), import, None)?.model.spec().clone())
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Writes secret bytes to a new file that only its owner can read (mode 0600 from creation
/// on Unix: any old file is removed first, so no other mode is ever in force).
fn write_secret_file(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("replacing {}", path.display()))
        }
        _ => {}
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).with_context(|| format!("writing {}", path.display()))
}

/// Largest plan.json, key id or secret key file read (1 MiB; the real ones are a few KB).
const MAX_SMALL_FILE: u64 = 1 << 20;

/// Reads `path` if it holds at most `limit` bytes (checked before reading).
pub(crate) fn read_file(path: &Path, limit: u64) -> Result<Vec<u8>> {
    blindfold_nn::read_bounded(path, limit).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))
}

pub(crate) fn keygen_cmd(model: &str, import: &ImportArgs, out_dir: &Path) -> Result<()> {
    let arch = arch_of(model, import)?;
    let info = PlanInfo::for_architecture(&arch, &ChainOptions::default())
        .with_context(|| format!("compiling the architecture of {model}"))?;
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let (client, keys) = Client::new(&info)?;
    let sk_path = out_dir.join("secret.key");
    write_secret_file(&sk_path, &client.secret_key().to_bytes()?)?;
    let keys_bytes = keys.to_bytes();
    write_file(&out_dir.join("eval.keys"), &keys_bytes)?;
    let key_id = client.key_id().context("the client made evaluation keys")?;
    write_file(&out_dir.join("key.id"), format!("{}\n", key_id.to_hex()).as_bytes())?;
    write_file(&out_dir.join("plan.json"), serde_json::to_string_pretty(&info)?.as_bytes())?;
    println!(
        "wrote {} (secret: keep it), eval.keys ({:.1} MB), key.id and plan.json to {}",
        sk_path.display(),
        keys_bytes.len() as f64 / 1e6,
        out_dir.display()
    );
    Ok(())
}

fn load_client(keys: &Path) -> Result<Client> {
    Ok(load_client_and_plan(keys)?.0)
}

/// The client whose keys `keygen` wrote to `keys`, and the plan they were made for.
pub(crate) fn load_client_and_plan(keys: &Path) -> Result<(Client, PlanInfo)> {
    let plan_path = keys.join("plan.json");
    let info: PlanInfo = serde_json::from_slice(&read_file(&plan_path, MAX_SMALL_FILE)?)
        .with_context(|| format!("{} is not a plan file", plan_path.display()))?;
    let ctx = blindfold_ckks::Context::new(&info.parameters().with_context(|| format!("{}", plan_path.display()))?)?;
    let sk_path = keys.join("secret.key");
    let sk_bytes = zeroize::Zeroizing::new(read_file(&sk_path, MAX_SMALL_FILE)?);
    let sk = SecretKey::from_bytes(&sk_bytes, &ctx).with_context(|| format!("loading {}", sk_path.display()))?;
    let mut client =
        Client::with_secret_key(&info, &sk).with_context(|| format!("{} does not fit its key", plan_path.display()))?;
    let id_path = keys.join("key.id");
    let id = String::from_utf8_lossy(&read_file(&id_path, MAX_SMALL_FILE)?).into_owned();
    client.set_key_id(KeyId::from_hex(&id).with_context(|| format!("reading {}", id_path.display()))?);
    Ok((client, info))
}

pub(crate) fn encrypt_cmd(keys: &Path, data: &DataArgs, index: usize, out: &Path) -> Result<()> {
    let mut client = load_client(keys)?;
    let test = data.load(Split::Test)?;
    if index >= test.len() {
        bail!("--index {index} is out of range: the test set has {} images", test.len());
    }
    let msg = client.encrypt_pixels(test.images.image(index))?.to_bytes();
    write_file(out, &msg)?;
    println!(
        "encrypted test image {index} (label {}) into {} ({:.2} MB)",
        test.labels[index],
        out.display(),
        msg.len() as f64 / 1e6
    );
    Ok(())
}

pub(crate) fn evaluate_cmd(
    model: &Path,
    import: &ImportArgs,
    eval_keys: &Path,
    input: &Path,
    out: &Path,
) -> Result<()> {
    let m = load_model(model, import, None)?.model;
    let compiled =
        CompiledModel::new(&m, &ChainOptions::default()).with_context(|| format!("compiling {}", model.display()))?;
    let mut holder = ModelHolder::new(compiled);
    // Each file is bounded by what the plan allows before it is read.
    let keys = Message::from_bytes_limited(
        &read_file(eval_keys, holder.model().max_keys_len() as u64)?,
        holder.model().max_keys_len(),
    )
    .with_context(|| format!("reading {}", eval_keys.display()))?;
    holder.handle(&keys).with_context(|| format!("loading evaluation keys {}", eval_keys.display()))?;
    let request = Message::from_bytes_limited(
        &read_file(input, holder.model().max_image_len() as u64)?,
        holder.model().max_image_len(),
    )
    .with_context(|| format!("reading {}", input.display()))?;
    let t = Instant::now();
    let reply = holder
        .handle(&request)
        .with_context(|| format!("evaluating {} with the keys of {}", input.display(), eval_keys.display()))?
        .context("the request produced no reply")?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let bytes = reply.to_bytes();
    write_file(out, &bytes)?;
    println!("evaluated {} in {ms:.1} ms; wrote encrypted scores to {}", input.display(), out.display());
    Ok(())
}

pub(crate) fn decrypt_cmd(keys: &Path, input: &Path, json: bool) -> Result<()> {
    let client = load_client(keys)?;
    let limit = Ciphertext::max_size(client.context()) + 64;
    let bytes = read_file(input, limit as u64)?;
    if read_header(&bytes).is_ok() {
        bail!("{} is a bare CKKS object, expected the scores file written by `blindfold evaluate`", input.display());
    }
    let msg = Message::from_bytes_limited(&bytes, limit).with_context(|| format!("reading {}", input.display()))?;
    let scores = client
        .decrypt_scores(&msg)
        .with_context(|| format!("decrypting {} with the keys in {}", input.display(), keys.display()))?;
    let s32: Vec<f32> = scores.iter().map(|&v| v as f32).collect();
    let class = argmax(&s32);
    if json {
        println!("{}", serde_json::json!({ "class": class, "scores": scores }));
    } else {
        println!("predicted class {class}");
        for (i, s) in scores.iter().enumerate() {
            println!("  {i}: {s:>9.3}");
        }
    }
    Ok(())
}
