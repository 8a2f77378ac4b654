//! `ringway-perf`: a fast HTTP/1.1 origin, a load generator, and a side-by-side comparison of
//! ringway against nginx, HAProxy and direct-to-origin on this machine.

mod churn;
mod client;
mod compare;
mod config_files;
mod conn;
mod contender;
mod grpc_origin;
mod http;
mod identity;
mod idle;
mod jwt_fixtures;
mod load;
mod origin;
mod process;
mod procstat;
mod report;
mod routes;
mod scenarios;
mod summary;
mod svg;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Command line of `ringway-perf`.
#[derive(Debug, Parser)]
#[command(name = "ringway-perf", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a fixed response to every request until killed.
    Origin(origin::OriginArgs),
    /// Serve a fixed gRPC answer to every call (HTTP/2 with prior knowledge) until killed.
    GrpcOrigin(grpc_origin::GrpcOriginArgs),
    /// Generate HTTP/1.1 load against a URL and report throughput and latency.
    Load(load::LoadArgs),
    /// Race ringway against nginx, HAProxy and direct-to-origin, one core for the proxy.
    Compare(compare::CompareArgs),
    /// Route-matching cost with 10 to 10,000 routes loaded.
    Routes {
        /// Passes over the 1,024 sample requests per table size.
        #[arg(long, default_value_t = 2000)]
        rounds: usize,
    },
    /// Admin write to every worker serving it, CPU per swap, and p99 under config churn.
    Churn(churn::ChurnArgs),
    /// Memory per idle client keep-alive connection, with 10,000 of them open.
    Idle(idle::IdleArgs),
    /// JWT cold-verification cost per algorithm; consumer lookup and memory, 10 and 100,000.
    Identity {
        /// Verifications per algorithm.
        #[arg(long, default_value_t = 2000)]
        rounds: usize,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Origin(args) => origin::run(&args),
        Command::GrpcOrigin(args) => grpc_origin::run(&args),
        Command::Load(args) => {
            let report = load::run(&args)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.to_table());
            }
            Ok(())
        }
        Command::Compare(args) => compare::run(&args),
        Command::Routes { rounds } => {
            routes::run(rounds);
            Ok(())
        }
        Command::Churn(args) => churn::run(&args),
        Command::Idle(args) => idle::run(&args),
        Command::Identity { rounds } => {
            identity::run(rounds);
            Ok(())
        }
    }
}
