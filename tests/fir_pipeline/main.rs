//! The seed's failure scenarios against the real demo binary, real sockets
//! and a real MariaDB server: each scenario prints the downtime it measured.

mod database;
mod gate;
mod restart;
mod support;
mod upstreams;

mod cli {
    //! The demo's first minute: `--help`, mistakes, a busy port.
    use std::process::Command;

    use crate::support::demo_binary;

    fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
        let out = Command::new(demo_binary())
            .args(args)
            .envs(env.iter().copied())
            .env("STARTUP_TIMEOUT", "1")
            .output()
            .expect("the demo runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    #[test]
    fn help_is_answered_and_unknown_arguments_refused() {
        let (code, stdout, _) = run(&["--help"], &[]);
        assert_eq!(code, Some(0));
        assert!(
            stdout.contains("--chaos") && stdout.contains("HOST"),
            "{stdout}"
        );
        let (code, _, stderr) = run(&["--chaso"], &[]);
        assert_eq!(code, Some(2));
        assert!(stderr.contains("unknown argument \"--chaso\""), "{stderr}");
    }

    #[test]
    fn every_bad_setting_is_named_at_once() {
        let (code, _, stderr) = run(
            &[],
            &[
                ("PORT", "80x"),
                ("HOST", "localhostt"),
                ("FIR_CHAOS", "maybe"),
                ("HEALTH_CHECK_INTERVAL", "-1"),
            ],
        );
        assert_eq!(code, Some(2), "{stderr}");
        for named in [
            "PORT=\"80x\"",
            "HOST=\"localhostt\"",
            "FIR_CHAOS=\"maybe\"",
            "HEALTH_CHECK_INTERVAL=\"-1\"",
        ] {
            assert!(stderr.contains(named), "{named} not named in:\n{stderr}");
        }
    }

    #[test]
    fn a_busy_port_is_named() {
        let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = busy.local_addr().unwrap().port().to_string();
        let dir = crate::support::temp_dir("busy-port");
        let db = format!("sqlite://{}?mode=rwc", dir.join("fir.db").display());
        let (code, _, stderr) = run(&[], &[("PORT", &port), ("DATABASE_URL", &db)]);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("PORT={port}")) && stderr.contains("in use"),
            "{stderr}"
        );
    }
}
