//! [`Tpm`] over tss-esapi. All the authorizations are empty (the hierarchies'
//! default); hierarchies with a password are not supported yet.

use std::collections::BTreeMap;
use std::convert::TryFrom;
use std::str::FromStr;

use circ_measured_boot::{Digests, HashAlg, PcrIndex, PcrSet};
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
use tss_esapi::constants::tss::TPM2_TRANSIENT_FIRST;
use tss_esapi::constants::{CapabilityType, SessionType};
use tss_esapi::handles::{KeyHandle, ObjectHandle, PcrHandle, SessionHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::PolicySession;
use tss_esapi::structures::{
    CapabilityData, Data, Digest, DigestValues, EccParameter, EccPoint, EccScheme, HashScheme,
    KeyDerivationFunctionScheme, KeyedHashScheme, PcrSelectionList, PcrSelectionListBuilder,
    PcrSlot, Private, Public, PublicBuilder, PublicEccParametersBuilder, PublicKeyedHashParameters,
    SensitiveData, SignatureScheme, SymmetricDefinition, SymmetricDefinitionObject,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::Context;

use crate::blob::{AkBlob, BindKeyBlob, BlobError, SealedBlob};
use crate::{RawQuote, Secret, Tpm, TpmError};

/// Largest `extraData` a quote takes (`TPM2B_DATA` holds a `TPMT_HA`).
const MAX_NONCE: usize = 64;

/// A TPM reached through a TCTI.
#[derive(Debug)]
pub struct EsapiTpm {
    ctx: Context,
}

fn cmd(op: &'static str) -> impl FnOnce(tss_esapi::Error) -> TpmError {
    move |source| TpmError::Command { op, source }
}

impl EsapiTpm {
    /// Opens `tcti`, e.g. `device:/dev/tpmrm0` or `swtpm:host=127.0.0.1,port=2321`.
    pub fn open(tcti: &str) -> Result<Self, TpmError> {
        let conf = TctiNameConf::from_str(tcti).map_err(|_| TpmError::BadTcti(tcti.into()))?;
        let ctx = Context::new(conf).map_err(|source| TpmError::Connect {
            tcti: tcti.into(),
            source,
        })?;
        Ok(Self { ctx })
    }

    /// Runs `f` with a transient object, flushing it afterwards whatever `f` returned.
    fn with_flushed<R>(
        &mut self,
        handle: ObjectHandle,
        f: impl FnOnce(&mut Self) -> Result<R, TpmError>,
    ) -> Result<R, TpmError> {
        let result = f(self);
        let flushed = self.ctx.flush_context(handle).map_err(cmd("FlushContext"));
        // The command's own error is the interesting one.
        let value = result?;
        flushed?;
        Ok(value)
    }

    /// The parent of Circular's keys: an ECC P-256 storage key, re-created on
    /// demand from the hierarchy's seed (same template, same key), so nothing
    /// needs to be persisted in the TPM's NV memory.
    fn create_parent(&mut self, hierarchy: Hierarchy) -> Result<KeyHandle, TpmError> {
        let template = parent_template()?;
        self.ctx
            .execute_with_nullauth_session(|ctx| {
                ctx.create_primary(hierarchy, template, None, None, None, None)
            })
            .map(|r| r.key_handle)
            .map_err(cmd("CreatePrimary"))
    }

    fn load(
        &mut self,
        hierarchy: Hierarchy,
        public: &[u8],
        private: &[u8],
    ) -> Result<KeyHandle, TpmError> {
        let public = Public::unmarshall(public).map_err(|_| {
            TpmError::Blob(BlobError::NotEcc("public area does not unmarshal".into()))
        })?;
        let private = Private::try_from(private.to_vec()).map_err(|_| TpmError::TooLong {
            what: "private area",
            len: private.len(),
            max: 1024,
        })?;
        let parent = self.create_parent(hierarchy)?;
        self.with_flushed(parent.into(), |me| {
            me.ctx
                .execute_with_nullauth_session(|ctx| ctx.load(parent, private, public))
                .map_err(cmd("Load"))
        })
    }

    /// Creates a key from `template` under `hierarchy`'s primary: its
    /// marshalled public area and its wrapped private part.
    fn create_child(
        &mut self,
        hierarchy: Hierarchy,
        template: Public,
    ) -> Result<(Vec<u8>, Vec<u8>), TpmError> {
        let parent = self.create_parent(hierarchy)?;
        let created = self.with_flushed(parent.into(), |me| {
            me.ctx
                .execute_with_nullauth_session(|ctx| {
                    ctx.create(parent, template, None, None, None, None)
                })
                .map_err(cmd("Create"))
        })?;
        Ok((
            created
                .out_public
                .marshall()
                .map_err(cmd("marshal public"))?,
            created.out_private.value().to_vec(),
        ))
    }

    /// A policy session holding PolicyPCR over the current values of `pcrs`.
    fn pcr_policy_session(
        &mut self,
        kind: SessionType,
        pcrs: &PcrSet,
    ) -> Result<PolicySession, TpmError> {
        let session = self
            .ctx
            .start_auth_session(
                None,
                None,
                None,
                kind,
                SymmetricDefinition::Null,
                HashingAlgorithm::Sha256,
            )
            .map_err(cmd("StartAuthSession"))?
            .ok_or_else(|| TpmError::Unexpected("no session handle".into()))?;
        let policy = PolicySession::try_from(session)
            .map_err(|_| TpmError::Unexpected("not a policy session".into()))?;
        let selection = selection(pcrs)?;
        // An empty digest makes the TPM use the PCRs' current values.
        if let Err(e) = self.ctx.policy_pcr(policy, Digest::default(), selection) {
            let _ = self.ctx.flush_context(SessionHandle::from(policy).into());
            return Err(cmd("PolicyPCR")(e));
        }
        Ok(policy)
    }
}

fn parent_template() -> Result<Public, TpmError> {
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(ecc_attributes(true, false, true)?)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                EccCurve::NistP256,
            )
            .build()
            .map_err(cmd("template"))?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .map_err(cmd("template"))
}

/// Attributes shared by Circular's ECC keys (`fixedTPM|fixedParent|
/// sensitiveDataOrigin|userWithAuth|noDA`) plus the key's own.
fn ecc_attributes(
    restricted: bool,
    sign: bool,
    decrypt: bool,
) -> Result<tss_esapi::attributes::ObjectAttributes, TpmError> {
    ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(restricted)
        .with_sign_encrypt(sign)
        .with_decrypt(decrypt)
        .build()
        .map_err(cmd("template"))
}

/// A P-256 signing (`sign`) or ECDH (not `sign`) key template, no
/// symmetric algorithm, with `scheme`.
fn ecc_template(restricted: bool, sign: bool, scheme: EccScheme) -> Result<Public, TpmError> {
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(ecc_attributes(restricted, sign, !sign)?)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new()
                .with_ecc_scheme(scheme)
                .with_curve(EccCurve::NistP256)
                .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
                .with_symmetric(SymmetricDefinitionObject::Null)
                .with_is_signing_key(sign)
                .with_is_decryption_key(!sign)
                .with_restricted(restricted)
                .build()
                .map_err(cmd("template"))?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .map_err(cmd("template"))
}

fn ak_template() -> Result<Public, TpmError> {
    // Restricted: it signs only what the TPM itself generated (quotes), so a
    // signature with TPM_GENERATED_VALUE cannot be forged through it.
    ecc_template(
        true,
        true,
        EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
    )
}

fn bind_template() -> Result<Public, TpmError> {
    // Unrestricted decryption key for ECDH only: it derives shared secrets
    // on request, signs nothing, and never leaves this TPM.
    ecc_template(
        false,
        false,
        EccScheme::EcDh(HashScheme::new(HashingAlgorithm::Sha256)),
    )
}

fn sealed_template(policy: Digest) -> Result<Public, TpmError> {
    // No userWithAuth: the PCR policy is the only way to use it.
    let attrs = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_no_da(true)
        .build()
        .map_err(cmd("template"))?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attrs)
        .with_auth_policy(policy)
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
        .map_err(cmd("template"))
}

fn slot(pcr: PcrIndex) -> Result<PcrSlot, TpmError> {
    PcrSlot::try_from(1u32 << pcr.get())
        .map_err(|_| TpmError::Unexpected(format!("PCR {pcr} has no slot")))
}

fn selection(pcrs: &PcrSet) -> Result<PcrSelectionList, TpmError> {
    let slots: Vec<PcrSlot> = pcrs.iter().map(slot).collect::<Result<_, _>>()?;
    PcrSelectionListBuilder::new()
        .with_selection(HashingAlgorithm::Sha256, &slots)
        .build()
        .map_err(cmd("PCR selection"))
}

impl Tpm for EsapiTpm {
    fn extend(&mut self, pcr: PcrIndex, digests: &Digests) -> Result<(), TpmError> {
        let handle = PcrHandle::try_from(ObjectHandle::from(u32::from(pcr.get())))
            .map_err(|_| TpmError::Unexpected(format!("PCR {pcr} has no handle")))?;
        let mut values = DigestValues::new();
        for (alg, tss_alg) in [
            (HashAlg::Sha256, HashingAlgorithm::Sha256),
            (HashAlg::Sha1, HashingAlgorithm::Sha1),
        ] {
            if let Some(d) = digests.get(alg) {
                let d = Digest::try_from(d.to_vec()).map_err(cmd("PCR_Extend"))?;
                values.set(tss_alg, d);
            }
        }
        self.ctx
            .execute_with_nullauth_session(|ctx| ctx.pcr_extend(handle, values))
            .map_err(cmd("PCR_Extend"))
    }

    fn read_pcrs(&mut self, pcrs: &PcrSet) -> Result<BTreeMap<PcrIndex, Vec<u8>>, TpmError> {
        let mut out = BTreeMap::new();
        // One PCR per command: a TPM returns at most 8 digests per PCR_Read.
        for pcr in pcrs.iter() {
            let one: PcrSet = std::iter::once(pcr).collect();
            let (_, _, digests) = self
                .ctx
                .pcr_read(selection(&one)?)
                .map_err(cmd("PCR_Read"))?;
            let value = digests
                .value()
                .first()
                .ok_or_else(|| TpmError::Unexpected(format!("no SHA-256 bank for PCR {pcr}")))?;
            out.insert(pcr, value.value().to_vec());
        }
        Ok(out)
    }

    fn create_ak(&mut self) -> Result<AkBlob, TpmError> {
        let (public, private) = self.create_child(Hierarchy::Endorsement, ak_template()?)?;
        Ok(AkBlob { public, private })
    }

    fn quote(&mut self, ak: &AkBlob, nonce: &[u8], pcrs: &PcrSet) -> Result<RawQuote, TpmError> {
        crate::check_len("nonce", nonce.len(), MAX_NONCE)?;
        let nonce = Data::try_from(nonce.to_vec()).map_err(cmd("Quote"))?;
        let selection = selection(pcrs)?;
        let key = self.load(Hierarchy::Endorsement, &ak.public, &ak.private)?;
        let (attest, signature) = self.with_flushed(key.into(), |me| {
            me.ctx
                .execute_with_nullauth_session(|ctx| {
                    ctx.quote(key, nonce, SignatureScheme::Null, selection)
                })
                .map_err(cmd("Quote"))
        })?;
        Ok(RawQuote {
            attest: attest.marshall().map_err(cmd("marshal attest"))?,
            signature: signature.marshall().map_err(cmd("marshal signature"))?,
        })
    }

    fn seal(&mut self, secret: &Secret, pcrs: &PcrSet) -> Result<SealedBlob, TpmError> {
        crate::check_len("secret", secret.expose().len(), Secret::MAX_LEN)?;
        let data = SensitiveData::try_from(secret.expose().to_vec()).map_err(cmd("Create"))?;
        let trial = self.pcr_policy_session(SessionType::Trial, pcrs)?;
        let digest = self.with_flushed(SessionHandle::from(trial).into(), |me| {
            me.ctx
                .policy_get_digest(trial)
                .map_err(cmd("PolicyGetDigest"))
        })?;
        let template = sealed_template(digest)?;
        let parent = self.create_parent(Hierarchy::Owner)?;
        let created = self.with_flushed(parent.into(), |me| {
            me.ctx
                .execute_with_nullauth_session(|ctx| {
                    ctx.create(parent, template, None, Some(data), None, None)
                })
                .map_err(cmd("Create"))
        })?;
        Ok(SealedBlob {
            pcrs: pcrs.clone(),
            public: created
                .out_public
                .marshall()
                .map_err(cmd("marshal public"))?,
            private: created.out_private.value().to_vec(),
        })
    }

    fn unseal(&mut self, blob: &SealedBlob) -> Result<Secret, TpmError> {
        let object = self.load(Hierarchy::Owner, &blob.public, &blob.private)?;
        self.with_flushed(object.into(), |me| {
            let policy = me.pcr_policy_session(SessionType::Policy, &blob.pcrs)?;
            me.with_flushed(SessionHandle::from(policy).into(), |me| {
                me.ctx
                    .execute_with_session(Some(policy.into()), |ctx| ctx.unseal(object.into()))
                    .map(|data| Secret::new(data.value().to_vec()))
                    .map_err(|e| match e {
                        tss_esapi::Error::Tss2Error(rc)
                            if rc.kind() == Some(Tss2ResponseCodeKind::PolicyFail) =>
                        {
                            TpmError::PcrPolicy
                        }
                        e => cmd("Unseal")(e),
                    })
            })
        })
    }

    fn create_bind_key(&mut self) -> Result<BindKeyBlob, TpmError> {
        let (public, private) = self.create_child(Hierarchy::Owner, bind_template()?)?;
        Ok(BindKeyBlob { public, private })
    }

    fn ecdh_zgen(&mut self, key: &BindKeyBlob, point: &[u8]) -> Result<Secret, TpmError> {
        if point.len() != 65 || point[0] != 4 {
            return Err(TpmError::BadPoint);
        }
        let x = EccParameter::try_from(point[1..33].to_vec()).map_err(cmd("ECDH_ZGen"))?;
        let y = EccParameter::try_from(point[33..].to_vec()).map_err(cmd("ECDH_ZGen"))?;
        let key = self.load(Hierarchy::Owner, &key.public, &key.private)?;
        let z = self.with_flushed(key.into(), |me| {
            me.ctx
                .execute_with_nullauth_session(|ctx| ctx.ecdh_z_gen(key, EccPoint::new(x, y)))
                .map_err(cmd("ECDH_ZGen"))
        })?;
        let x = z.x().value();
        if x.len() > 32 {
            return Err(TpmError::Unexpected(format!("ECDH x of {} bytes", x.len())));
        }
        // Left-pad: a TPM may drop leading zero bytes.
        let mut out = vec![0u8; 32];
        out[32 - x.len()..].copy_from_slice(x);
        Ok(Secret::new(out))
    }

    fn flush_transients(&mut self) -> Result<usize, TpmError> {
        let (data, _) = self
            .ctx
            .get_capability(CapabilityType::Handles, TPM2_TRANSIENT_FIRST, 64)
            .map_err(cmd("GetCapability"))?;
        let CapabilityData::Handles(handles) = data else {
            return Err(TpmError::Unexpected(
                "GetCapability(handles) returned something else".into(),
            ));
        };
        let mut flushed = 0;
        for handle in handles.into_inner() {
            if let TpmHandle::Transient(_) = handle {
                let object = self
                    .ctx
                    .tr_from_tpm_public(handle)
                    .map_err(cmd("TR_FromTPMPublic"))?;
                self.ctx
                    .flush_context(object)
                    .map_err(cmd("FlushContext"))?;
                flushed += 1;
            }
        }
        Ok(flushed)
    }
}
