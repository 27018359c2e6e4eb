//! What a caller is told for each domain error: its status and stable code, written once for
//! every function. Domain code stays free of HTTP; this is the one place that maps it.

use super::{Problem, StatusCode};
use crate::auth::AuthError;
use crate::domain::instance_proof::ProofError;
use crate::domain::intake::IntakeError;
use crate::domain::packer::ManifestError;
use crate::domain::stripe::StripeError;
use crate::signature::{SignatureError, StripeSignatureError};
use crate::store::StoreError;
use crate::token::TokenError;

impl Problem for StoreError {
    fn status(&self) -> StatusCode {
        StatusCode::SERVICE_UNAVAILABLE
    }
    fn code(&self) -> &'static str {
        "store_unavailable"
    }
    fn public_message(&self) -> String {
        // Every write an outside request causes is idempotent: repeating it is safe.
        "the ledger did not answer; send the request again".into()
    }
}

impl Problem for AuthError {
    fn status(&self) -> StatusCode {
        match self {
            AuthError::Missing | AuthError::Unknown => StatusCode::UNAUTHORIZED,
            AuthError::Store(err) => err.status(),
        }
    }
    fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            AuthError::Unknown => "invalid_token",
            AuthError::Store(err) => err.code(),
        }
    }
    fn public_message(&self) -> String {
        match self {
            AuthError::Store(err) => err.public_message(),
            other => other.to_string(),
        }
    }
}

impl Problem for TokenError {
    fn status(&self) -> StatusCode {
        StatusCode::SERVICE_UNAVAILABLE
    }
    fn code(&self) -> &'static str {
        "no_randomness"
    }
    fn public_message(&self) -> String {
        "a credential could not be made; send the request again".into()
    }
}

impl Problem for IntakeError {
    fn status(&self) -> StatusCode {
        match self {
            IntakeError::UnsupportedContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            IntakeError::MissingHeader(_) => "missing_header",
            IntakeError::UnsupportedContentType(_) => "unsupported_content_type",
            IntakeError::MissingPayloadField => "missing_payload",
            IntakeError::InvalidPayload { .. } => "invalid_payload",
        }
    }
}

impl Problem for ManifestError {
    fn status(&self) -> StatusCode {
        match self {
            ManifestError::Invalid(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            ManifestError::Invalid(_) => "invalid_manifest",
            ManifestError::NoBuilds => "no_builds",
            ManifestError::UnknownBuilder { .. } => "unknown_builder",
            ManifestError::Malformed { .. } => "malformed_artifact",
            ManifestError::RegionConflict { .. } => "region_conflict",
            ManifestError::TooManyRegions { .. } => "too_many_regions",
        }
    }
}

impl Problem for SignatureError {
    fn status(&self) -> StatusCode {
        StatusCode::UNAUTHORIZED
    }
    fn code(&self) -> &'static str {
        "invalid_signature"
    }
}

impl Problem for StripeSignatureError {
    fn status(&self) -> StatusCode {
        match self {
            StripeSignatureError::Missing | StripeSignatureError::Malformed(_) => StatusCode::BAD_REQUEST,
            StripeSignatureError::Mismatch | StripeSignatureError::OutsideTolerance { .. } => StatusCode::UNAUTHORIZED,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            StripeSignatureError::Missing | StripeSignatureError::Malformed(_) => "malformed_signature",
            StripeSignatureError::Mismatch | StripeSignatureError::OutsideTolerance { .. } => "invalid_signature",
        }
    }
}

impl Problem for StripeError {
    fn status(&self) -> StatusCode {
        StatusCode::BAD_REQUEST
    }
    fn code(&self) -> &'static str {
        "invalid_event"
    }
}

impl Problem for ProofError {
    fn status(&self) -> StatusCode {
        match self {
            ProofError::Malformed(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::FORBIDDEN,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            ProofError::Malformed(_) => "invalid_proof",
            _ => "proof_refused",
        }
    }
}

#[cfg(feature = "ec2")]
mod ec2 {
    use super::*;
    use crate::ec2::Ec2Error;
    use crate::provider_images::ImagesError;

    impl Problem for Ec2Error {
        fn status(&self) -> StatusCode {
            StatusCode::BAD_GATEWAY
        }
        fn code(&self) -> &'static str {
            "ec2_unavailable"
        }
        fn public_message(&self) -> String {
            // EC2's own text can name account ids and ARNs: it stays in the log.
            self.public()
        }
    }

    impl Problem for ImagesError {
        fn status(&self) -> StatusCode {
            match self {
                ImagesError::Store(err) => err.status(),
                ImagesError::Contended(_) => StatusCode::SERVICE_UNAVAILABLE,
                ImagesError::NothingToRollBack { .. } | ImagesError::WouldDropRegions { .. } => StatusCode::CONFLICT,
                ImagesError::Manifest(err) => err.status(),
            }
        }
        fn code(&self) -> &'static str {
            match self {
                ImagesError::Store(err) => err.code(),
                ImagesError::Contended(_) => "contended",
                ImagesError::NothingToRollBack { .. } => "nothing_to_roll_back",
                ImagesError::WouldDropRegions { .. } => "would_drop_regions",
                ImagesError::Manifest(err) => err.code(),
            }
        }
        fn public_message(&self) -> String {
            match self {
                ImagesError::Store(err) => err.public_message(),
                // The provider's name and versions: the caller's own configuration.
                other => other.to_string(),
            }
        }
    }
}

#[cfg(feature = "s3")]
impl Problem for crate::s3::S3Error {
    fn status(&self) -> StatusCode {
        StatusCode::SERVICE_UNAVAILABLE
    }
    fn code(&self) -> &'static str {
        "artifact_unavailable"
    }
    fn public_message(&self) -> String {
        // S3's text names buckets and keys of the account: it stays in the log.
        "the build artifact could not be reached; send the request again".into()
    }
}

#[cfg(feature = "sts")]
impl Problem for crate::sts::StsError {
    fn status(&self) -> StatusCode {
        match self {
            crate::sts::StsError::Refused { .. } => StatusCode::FORBIDDEN,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            crate::sts::StsError::Refused { .. } => "proof_refused",
            _ => "sts_unavailable",
        }
    }
    fn public_message(&self) -> String {
        match self {
            refused @ crate::sts::StsError::Refused { .. } => refused.to_string(),
            _ => "STS could not be asked about the instance proof; poll again".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::problem;
    use super::*;

    fn answer(err: &impl Problem) -> (StatusCode, serde_json::Value) {
        let response = problem(err);
        (response.status(), serde_json::from_slice(response.body()).unwrap())
    }

    #[test]
    fn server_errors_never_tell_the_caller_their_internals() {
        let err = StoreError::Aws {
            operation: "PutItem",
            table: "conveyor-prod".into(),
            message: "AccessDeniedException: arn:aws:iam::123456789012:role/x".into(),
        };
        let (status, body) = answer(&err);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"]["code"], "store_unavailable");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(!message.contains("123456789012") && !message.contains("conveyor-prod"), "{message}");
        let wrapped = AuthError::Store(err);
        assert_eq!(answer(&wrapped).1, body, "a wrapped store error answers as the store error");
    }

    #[test]
    fn client_errors_name_the_problem() {
        let (status, body) = answer(&IntakeError::UnsupportedContentType("text/plain".into()));
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, Some("unsupported_content_type"))
        );
        assert!(body["error"]["message"].as_str().unwrap().contains("text/plain"));
        let (status, body) = answer(&StripeSignatureError::OutsideTolerance { age: 900, tolerance: 300 });
        assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_signature")));
        let (status, body) = answer(&StripeSignatureError::Missing);
        assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("malformed_signature")));
        let (status, body) = answer(&ManifestError::NoBuilds);
        assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("no_builds")));
        let (status, body) = answer(&AuthError::Missing);
        assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("missing_token")));
    }
}
