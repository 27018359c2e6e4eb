//! SES adapter: an alert as a plain-text email from the channel's verified identity.

use aws_sdk_ses::Client;
use aws_sdk_ses::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_ses::types::{Body, Content, Destination, Message};

use crate::SdkConfig;

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// SES will not send it as it is (an unverified sender, a rejected message, no
    /// permission for the identity): sending it again changes nothing.
    #[error("SES refused the email from {from}: {message}")]
    Refused { from: String, message: String },
    /// SES could not take it now (throttled, unavailable): try again later.
    #[error("SES could not send the email from {from} now: {message}")]
    Unavailable { from: String, message: String },
}

#[derive(Clone, Debug)]
pub struct Mailer {
    client: Client,
}

impl Mailer {
    pub fn new(sdk: &SdkConfig) -> Self {
        // One attempt per send: SES may have taken a message whose answer was lost, and the
        // SDK's own retry would send it twice; alert-dispatch decides when to try again.
        let config = aws_sdk_ses::config::Builder::from(sdk)
            .retry_config(aws_sdk_ses::config::retry::RetryConfig::standard().with_max_attempts(1))
            .build();
        Self { client: Client::from_conf(config) }
    }

    /// Sends one email; answers SES's message id.
    pub async fn send(&self, from: &str, to: &[String], subject: &str, body: &str) -> Result<String, MailError> {
        let content = |text: &str| Content::builder().data(text).charset("UTF-8").build();
        let build_failed =
            |e: aws_sdk_ses::error::BuildError| MailError::Refused { from: from.into(), message: e.to_string() };
        let message = Message::builder()
            .subject(content(subject).map_err(build_failed)?)
            .body(Body::builder().text(content(body).map_err(build_failed)?).build())
            .build();
        let sent = self
            .client
            .send_email()
            .source(from)
            .destination(Destination::builder().set_to_addresses(Some(to.to_vec())).build())
            .message(message)
            .send()
            .await;
        match sent {
            Ok(output) => Ok(output.message_id),
            Err(err) => {
                let message = DisplayErrorContext(&err).to_string();
                let refused = matches!(
                    err.code(),
                    Some(
                        "MessageRejected"
                            | "MailFromDomainNotVerifiedException"
                            | "AccessDenied"
                            | "AccessDeniedException"
                            | "ConfigurationSetDoesNotExist"
                            | "AccountSendingPausedException"
                            | "InvalidParameterValue"
                    )
                );
                let from = from.to_owned();
                Err(if refused {
                    MailError::Refused { from, message }
                } else {
                    MailError::Unavailable { from, message }
                })
            }
        }
    }
}
