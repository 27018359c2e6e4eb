//! `conveyor dev`: every function behind one local server, against the emulator.

use std::path::PathBuf;
use std::process::ExitCode;

use conveyor_cli::context::AwsFlags;
use std::net::SocketAddr;

use clap::Args;
use conveyor_cli::dev;
use conveyor_shared::config::Config;

#[derive(Args)]
pub struct DevArgs {
    /// Where to listen (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:3000")]
    pub listen: SocketAddr,
    /// conveyor.toml (default: CONVEYOR_CONFIG, then ./conveyor.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The SAM-expanded template (`make lint` writes it): each function calls the emulator
    /// with a role holding its policy from there, so a missing permission fails here as in
    /// AWS. Without the file every function uses your own credentials, with a warning.
    #[arg(long, env = "CONVEYOR_TEMPLATE", default_value = conveyor_cli::local_iam::EXPANDED_TEMPLATE)]
    pub template: PathBuf,
}

impl DevArgs {
    pub async fn run(self, aws: &AwsFlags) -> Result<ExitCode, String> {
        let Self { listen, config, template } = self;
        let settings = aws.settings(config.as_deref());
        let config = Config::load(&settings.config_path).map_err(|e| e.to_string())?;
        let sdk = aws.sdk().await;
        if dev::prepare_local_table(&settings, &sdk).await.map_err(|e| e.to_string())? {
            println!("created table {} in the local emulator", settings.table);
        }
        let secrets = dev::WebhookSecrets::from_env();
        let sdks = if template.exists() {
            let roles = conveyor_cli::local_iam::Template::load(&template).map_err(|e| e.to_string())?;
            let sdks = dev::local_roles(&roles, &config, &settings, &secrets, &sdk).await.map_err(|e| e.to_string())?;
            println!("each function calls the emulator with its role's policy from {}", template.display());
            sdks
        } else {
            eprintln!(
                "warning: {} is missing (run `make lint`): every function calls the emulator with your credentials, so a permission the template lacks goes unnoticed",
                template.display()
            );
            dev::FunctionSdks::shared(&sdk)
        };
        let functions = dev::functions(config, &settings, &secrets, conveyor_shared::config::Timing::from_env(), &sdks)
            .await
            .map_err(|e| e.to_string())?;
        let listener = dev::bind(listen).await.map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        println!("conveyor dev listening on http://{addr} (table {})", settings.table);
        for function in functions.http.iter() {
            for route in function.routes() {
                println!("  {:6} {:34} -> {}", route.method, route.path, function.name());
            }
        }
        for function in &functions.streams {
            println!("  {:6} {:34} -> {}", "STREAM", format!("table {}", settings.table), function.name());
        }
        for function in &functions.schedules {
            println!("  {:6} {:34} -> {}", "EVERY", format!("{:?}", function.every()), function.name());
        }
        dev::run(listener, functions, &settings.table, sdks.caller(), async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| e.to_string())?;
        Ok(ExitCode::SUCCESS)
    }
}
