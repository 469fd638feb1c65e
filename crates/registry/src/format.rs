//! The model file format.
//!
//! ```text
//! offset  size  field
//! 0       8     magic "BSMODEL\0"
//! 8       4     format version, u32 little-endian (currently 4)
//! 12      8     payload length, u64 little-endian
//! 20      8     XXH3-64 of the payload, u64 little-endian
//! 28      n     payload: bincode 2 (standard config) of `Model` via serde
//! ```
//! The magic and the version stay where they are when anything else changes: a new layout or
//! payload codec gets a new format version, and a build refuses versions it does not read with
//! a message that says to retrain or re-import.
//!
//! The file's own checksum catches damage on every load (a torn write, a flipped bit, a file
//! whose index entry was edited to match it). It is XXH3, not a cryptographic hash: loading
//! 10,000 models per run made SHA-256 of each file a quarter of a model load. Tampering is the
//! registry index's concern, which records each file's SHA-256; `models verify` (and
//! [`Model::decode`]) check that too.

use bytes::Bytes;
use xxhash_rust::xxh3::xxh3_64;

use crate::{Model, RegistryError};

/// The first bytes of every model file.
pub const MAGIC: &[u8; 8] = b"BSMODEL\0";
/// The format version this build writes and the only one it reads. Version 4 checks the
/// payload with XXH3 instead of SHA-256; version 3 added the drift reference, version 2 the
/// compact pre-order forest. Older files are refused with a message naming the versions
/// (retrain or re-import those models).
pub const FORMAT_VERSION: u32 = 4;
const HEADER_LEN: usize = 8 + 4 + 8 + 8;
/// No model is bigger; a larger length field is corruption, and the bound caps allocations.
const MAX_PAYLOAD: u64 = 512 << 20;

/// The payload's checksum as the header stores it.
fn checksum(payload: &[u8]) -> [u8; 8] {
    xxh3_64(payload).to_le_bytes()
}

/// A whole model file around `payload`, in format `version` (tests write older versions).
pub(crate) fn file(version: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&checksum(payload));
    out.extend_from_slice(payload);
    out
}

impl Model {
    /// Encodes the model as a model file.
    pub fn encode(&self) -> Result<Bytes, RegistryError> {
        let payload =
            bincode::serde::encode_to_vec(self, bincode::config::standard()).map_err(|e| {
                RegistryError::Encode { key: self.meta.key.to_string(), reason: e.to_string() }
            })?;
        Ok(Bytes::from(file(FORMAT_VERSION, &payload)))
    }

    /// Decodes and validates a model file; `url` names it in errors.
    ///
    /// Checks everything: header, payload checksum, structure, and that the content hash (the
    /// model's version) matches the content.
    pub fn decode(url: &str, bytes: &[u8]) -> Result<Self, RegistryError> {
        Self::decode_with(url, bytes, Verify::Full)
    }

    pub(crate) fn decode_with(
        url: &str,
        bytes: &[u8],
        verify: Verify,
    ) -> Result<Self, RegistryError> {
        let corrupt = |reason: String| RegistryError::Corrupt { url: url.into(), reason };
        if bytes.len() < HEADER_LEN {
            return Err(corrupt(format!("{} bytes is shorter than the header", bytes.len())));
        }
        let (header, payload) = bytes.split_at(HEADER_LEN);
        if &header[..8] != MAGIC {
            return Err(corrupt("not a batchscore model file (bad magic bytes)".into()));
        }
        let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        if version != FORMAT_VERSION {
            return Err(RegistryError::FormatVersion {
                url: url.into(),
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&header[12..20]);
        let len = u64::from_le_bytes(len);
        if len > MAX_PAYLOAD || len != payload.len() as u64 {
            return Err(corrupt(format!(
                "header announces {len} payload bytes, file holds {}",
                payload.len()
            )));
        }
        // Always: the file's own checksum is what catches a damaged file whose index entry was
        // edited to match it (the index's whole-file SHA-256 would then agree).
        if checksum(payload) != header[20..28] {
            return Err(corrupt("checksum mismatch".into()));
        }
        // The limit bounds every allocation the decoder makes to the payload's size, so a forged
        // length prefix inside the payload cannot exhaust memory.
        let config = bincode::config::standard().with_limit::<{ MAX_PAYLOAD as usize }>();
        let (model, read): (Model, usize) = bincode::serde::decode_from_slice(payload, config)
            .map_err(|e| corrupt(format!("payload does not decode: {e}")))?;
        if read != payload.len() {
            return Err(corrupt(format!("{} trailing payload bytes", payload.len() - read)));
        }
        model.check(verify == Verify::Full).map_err(corrupt)?;
        Ok(model)
    }
}

/// How much of a model file `decode_with` checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verify {
    /// Every check, including the content-hash recomputation (the model's version).
    Full,
    /// The payload checksum and every structural check, not the content-hash recomputation
    /// (which re-encodes the whole forest): the hot path, where the caller checks the version
    /// the file states against the index.
    Structure,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{ModelKey, TrainingInfo};
    use batchscore_detectors::IsolationForestParams;
    use proptest::prelude::*;

    pub(crate) fn small_model(key: i64) -> Model {
        let params = IsolationForestParams { n_estimators: 5, seed: 7, ..Default::default() };
        let x: Vec<f64> = (0..50).map(|i| (i as f64 * 0.37).sin()).collect();
        let y: Vec<f64> = (0..50).map(|i| (i as f64 * 0.11).cos()).collect();
        let forest = params.clone().check().unwrap().fit(&[&x, &y]).unwrap();
        let summaries = vec![crate::FeatureSummary::of(&x), crate::FeatureSummary::of(&y)];
        Model::isolation_forest(
            ModelKey::device(key),
            &params,
            vec!["x".into(), "y".into()],
            TrainingInfo { rows: 50, from_us: Some(0), to_us: Some(49), summaries },
            forest,
            "2026-01-01T00:00:00Z".into(),
        )
        .unwrap()
        .with_drift(crate::DriftReference::of(&[&x, &y]))
        .unwrap()
    }

    /// Files of earlier formats are refused with the message that says what to do, whatever
    /// their checksum field holds (version 3 had a 32-byte SHA-256 there).
    #[test]
    fn older_versions_are_refused_with_the_clear_message() {
        let payload =
            bincode::serde::encode_to_vec(small_model(5), bincode::config::standard()).unwrap();
        for version in [1u32, 2, 3] {
            let mut old = Vec::new();
            old.extend_from_slice(MAGIC);
            old.extend_from_slice(&version.to_le_bytes());
            old.extend_from_slice(&(payload.len() as u64).to_le_bytes());
            old.extend_from_slice(&[7u8; 32]);
            old.extend_from_slice(&payload);
            let err = Model::decode("old.bsm", &old).unwrap_err();
            assert!(
                matches!(err, RegistryError::FormatVersion { found, supported: 4, .. } if found == version),
                "{err}"
            );
            let msg = err.to_string();
            assert!(msg.contains(&format!("format version {version}")), "{msg}");
            assert!(msg.contains("retrain or re-import"), "{msg}");
        }
        // A newer version than this build knows is refused the same way.
        let mut newer = file(5, &payload);
        assert!(matches!(
            Model::decode("new.bsm", &newer).unwrap_err(),
            RegistryError::FormatVersion { found: 5, .. }
        ));
        newer[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        assert_eq!(Model::decode("same.bsm", &newer).unwrap(), small_model(5));
    }

    #[test]
    fn a_drift_reference_of_the_wrong_width_is_refused() {
        let model = small_model(6);
        let one = crate::DriftReference::of(&[&[1.0, 2.0]]);
        assert!(model.clone().with_drift(one.clone()).is_err());
        let mut damaged = model;
        damaged.drift = Some(one);
        assert!(
            Model::decode("m", &damaged.encode().unwrap())
                .unwrap_err()
                .to_string()
                .contains("drift")
        );
    }

    #[test]
    fn round_trips() {
        let model = small_model(3);
        let bytes = model.encode().unwrap();
        assert_eq!(&bytes[..8], MAGIC);
        assert_eq!(Model::decode("m", &bytes).unwrap(), model);
    }

    #[test]
    fn version_ignores_creation_time() {
        let a = small_model(3);
        let mut b = small_model(3);
        b.meta.created_at = "2030-01-01T00:00:00Z".into();
        assert_eq!(Model::decode("m", &b.encode().unwrap()).unwrap().version(), a.version());
        assert_ne!(small_model(4).version(), a.version());
    }

    #[test]
    fn rejects_truncation_bad_magic_version_and_checksum() {
        let bytes = small_model(1).encode().unwrap().to_vec();
        for cut in [0, 10, HEADER_LEN, bytes.len() - 1] {
            assert!(Model::decode("m", &bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut b = bytes.clone();
        b[0] = b'X';
        assert!(Model::decode("m", &b).unwrap_err().to_string().contains("magic"));
        let mut b = bytes.clone();
        b[8] = 9;
        assert!(Model::decode("m", &b).unwrap_err().to_string().contains("version"));
        let mut b = bytes.clone();
        let last = b.len() - 1;
        b[last] ^= 0xff;
        assert!(Model::decode("m", &b).unwrap_err().to_string().contains("checksum"));
    }

    /// A hostile file with a valid checksum but a payload that breaks the forest's invariants.
    #[test]
    fn rejects_structurally_invalid_payloads_with_valid_checksums() {
        let model = small_model(1);
        let crate::DetectorModel::IsolationForest(forest) = &model.detector else {
            panic!("small_model is an IsolationForest")
        };
        // The forest's stored form is a byte string; take it out of a valid encoding and point
        // the root (after its 28 header bytes) at a feature the model does not have.
        let config = bincode::config::standard();
        let encoded = bincode::serde::encode_to_vec(forest, config).unwrap();
        let (mut stored, _): (Vec<u8>, usize) =
            bincode::serde::decode_from_slice(&encoded, config).unwrap();
        stored[28..30].copy_from_slice(&1000u16.to_le_bytes());
        #[derive(serde::Serialize)]
        enum Shadow {
            IsolationForest(#[serde(serialize_with = "as_bytes")] Vec<u8>),
        }
        fn as_bytes<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(v)
        }
        #[derive(serde::Serialize)]
        struct ShadowModel<'a> {
            meta: &'a crate::ModelMeta,
            detector: Shadow,
            drift: &'a Option<crate::DriftReference>,
        }
        let payload = bincode::serde::encode_to_vec(
            ShadowModel {
                meta: &model.meta,
                detector: Shadow::IsolationForest(stored),
                drift: &model.drift,
            },
            config,
        )
        .unwrap();
        let err = Model::decode("hostile", &file(FORMAT_VERSION, &payload)).unwrap_err();
        assert!(err.to_string().contains("feature 1000"), "{err}");
    }

    proptest! {
        /// Random byte flips and truncations never panic: they decode to the same model (a flip
        /// in padding cannot exist, so in practice) or fail with an error.
        #[test]
        fn arbitrary_damage_is_an_error_not_a_panic(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            cut in any::<usize>(),
        ) {
            let bytes = small_model(2).encode().unwrap().to_vec();
            let mut damaged = bytes.clone();
            for (at, value) in flips {
                let i = at % damaged.len();
                damaged[i] = value;
            }
            damaged.truncate(cut % (damaged.len() + 1));
            if damaged != bytes {
                prop_assert!(Model::decode("fuzz", &damaged).is_err());
            }
        }

        /// Payload damage behind a recomputed checksum still never panics.
        #[test]
        fn damaged_payload_with_fixed_checksum_never_panics(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        ) {
            let bytes = small_model(2).encode().unwrap().to_vec();
            let mut payload = bytes[HEADER_LEN..].to_vec();
            for (at, value) in flips {
                let i = at % payload.len();
                payload[i] = value;
            }
            let _ = Model::decode("fuzz", &file(FORMAT_VERSION, &payload));
        }
    }
}
