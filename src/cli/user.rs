//! `phigate user add|remove|list`: the SMTP AUTH users file.

use super::CliError;
use crate::auth::Users;
use crate::config::Config;
use clap::Subcommand;
use std::io::{BufRead, IsTerminal};
use std::path::Path;

#[derive(Subcommand, Debug)]
pub enum UserAction {
    /// Add a user or change its password (read from stdin, or prompted on a terminal).
    Add { name: String },
    /// Remove a user.
    Remove { name: String },
    /// List user names.
    List {
        #[arg(long)]
        json: bool,
    },
}

fn users_path(config: &Path) -> Result<std::path::PathBuf, CliError> {
    let cfg = Config::read(config)?;
    cfg.auth.users_file.ok_or_else(|| {
        CliError::Usage(format!(
            "{}: key `auth.users_file` is not set",
            config.display()
        ))
    })
}

fn read_password() -> Result<String, CliError> {
    if std::io::stdin().is_terminal() {
        let a = rpassword::prompt_password("Password: ")?;
        let b = rpassword::prompt_password("Again: ")?;
        if a != b {
            return Err(CliError::Usage("passwords do not match".into()));
        }
        return check_password(a);
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    check_password(line.trim_end_matches(['\r', '\n']).to_string())
}

fn check_password(p: String) -> Result<String, CliError> {
    if p.chars().count() < 8 {
        return Err(CliError::Usage(
            "password must be at least 8 characters".into(),
        ));
    }
    Ok(p)
}

pub fn run(config: &Path, action: &UserAction) -> Result<(), CliError> {
    let path = users_path(config)?;
    let mut users = Users::load(&path)?;
    match action {
        UserAction::Add { name } => {
            let existed = users.contains(name);
            let password = read_password()?;
            users.set(name, &password)?;
            users.save(&path)?;
            println!(
                "{} user {name} in {}",
                if existed { "updated" } else { "added" },
                path.display()
            );
        }
        UserAction::Remove { name } => {
            if !users.remove(name) {
                return Err(CliError::Usage(format!(
                    "no user `{name}` in {}",
                    path.display()
                )));
            }
            users.save(&path)?;
            println!("removed user {name} from {}", path.display());
        }
        UserAction::List { json } => {
            let names: Vec<&str> = users.names().collect();
            if *json {
                println!("{}", serde_json::to_string(&names).unwrap_or_default());
            } else {
                println!("USER");
                for n in names {
                    println!("{n}");
                }
            }
        }
    }
    Ok(())
}
