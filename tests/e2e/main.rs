//! End-to-end tests: real HTTP on loopback, real DynamoDB API (moto).

mod agent_channel;
mod alerts;
mod api;
mod cdn;
mod chaos;
mod checks;
mod intake;
mod limits;
mod local_aws;
mod manifests;
mod publish;
mod recording_faults;
mod rollout_races;
mod secrets_in_logs;
mod stripe;
mod triggers;
mod wait;
