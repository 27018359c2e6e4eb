//! `conveyor routes`: every function's registration as JSON, for the template check.

use std::process::ExitCode;

use conveyor_cli::dev;

pub fn run() -> Result<ExitCode, String> {
    println!("{}", serde_json::to_string_pretty(&dev::routes_json()).map_err(|e| e.to_string())?);
    Ok(ExitCode::SUCCESS)
}
