//! The man pages and shell completions of a daemon's command line, generated from its clap
//! definition by `NAME generate-docs --out DIR`, so that they always match the binary they ship
//! with (`dist/deb/build` runs it before packaging). That subcommand is not part of the clap
//! definition itself, so the pages and completions do not list it.

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap_complete::Shell;

/// The first argument that asks for the docs.
pub(super) const SUBCOMMAND: &str = "generate-docs";

/// `NAME generate-docs --out DIR`: writes the docs of `command` (see [`generate`]) and prints
/// the paths written.
pub(super) fn main(command: clap::Command) -> ExitCode {
    let name = command.get_name().to_owned();
    let args = clap::Command::new(SUBCOMMAND)
        .bin_name(format!("{name} {SUBCOMMAND}"))
        .about("Write the man pages and shell completions into a directory")
        .arg(
            clap::Arg::new("out")
                .long("out")
                .value_name("DIR")
                .required(true)
                .value_parser(clap::value_parser!(PathBuf))
                .help("`man/` (section 1) and `completions/` (bash, zsh, fish) go under it"),
        )
        .get_matches_from(std::env::args_os().skip(1));
    let out = args.get_one::<PathBuf>("out").expect("clap requires --out");
    match generate(command, out) {
        Ok(written) => {
            for path in written {
                println!("{}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{SUBCOMMAND}: {}: {e}", out.display());
            ExitCode::FAILURE
        }
    }
}

/// Writes under `out`: `man/NAME.1` and one `man/NAME-SUBCOMMAND.1` per visible subcommand (and
/// `man/NAME-SUBCOMMAND-SUB.1` per visible subcommand of one, which its page names), and
/// `completions/NAME.bash`, `completions/_NAME` (zsh) and `completions/NAME.fish`. Returns the
/// paths written.
pub(super) fn generate(mut command: clap::Command, out: &Path) -> io::Result<Vec<PathBuf>> {
    let name = command.get_name().to_owned();
    let man = out.join("man");
    let completions = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    command.build();
    let mut written = Vec::new();
    let page = |cmd: clap::Command, title: &str, file: PathBuf| -> io::Result<PathBuf> {
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd).title(title).render(&mut buf)?;
        std::fs::write(&file, buf)?;
        Ok(file)
    };
    written.push(page(command.clone(), &name, man.join(format!("{name}.1")))?);
    // (page name, command line, command): the visible subcommands, theirs after them.
    let mut todo: Vec<(String, String, clap::Command)> = command
        .get_subcommands()
        .map(|s| (name.clone(), name.clone(), s.clone()))
        .collect();
    while let Some((parent, line, sub)) = todo.pop() {
        // Hidden ones (a command that only says where the real one is) get no page.
        if sub.get_name() == "help" || sub.is_hide_set() {
            continue;
        }
        let full = format!("{parent}-{}", sub.get_name());
        let line = format!("{line} {}", sub.get_name());
        todo.extend(
            sub.get_subcommands()
                .map(|s| (full.clone(), line.clone(), s.clone())),
        );
        let sub = sub.display_name(full.clone()).bin_name(line);
        written.push(page(sub, &full, man.join(format!("{full}.1")))?);
    }
    // The completions offer the visible subcommands only: clap's generators list hidden ones too.
    // (`--help`, `--version` and `help` are made again by clap.)
    let generated = |a: &&clap::Arg| !matches!(a.get_id().as_str(), "help" | "version");
    let mut visible = clap::Command::new(name.clone())
        .bin_name(name.clone())
        .args(command.get_arguments().filter(generated).cloned())
        .subcommands(
            command
                .get_subcommands()
                .filter(|s| !s.is_hide_set() && s.get_name() != "help")
                .cloned(),
        );
    if let Some(v) = command.get_version() {
        visible = visible.version(v.to_owned());
    }
    let mut command = visible;
    for (shell, file) in [
        (Shell::Bash, format!("{name}.bash")),
        (Shell::Zsh, format!("_{name}")),
        (Shell::Fish, format!("{name}.fish")),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut command, &name, &mut buf);
        let path = completions.join(file);
        std::fs::write(&path, buf)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::generate;
    use clap::CommandFactory;

    #[test]
    fn every_subcommand_gets_a_page_and_every_shell_a_completion() {
        let dir = std::env::temp_dir().join(format!("wanmux-docs-{}", std::process::id()));
        let command = super::super::Cli::command()
            .name("wanmux-x")
            .bin_name("wanmux-x");
        let written = generate(command, &dir).expect("docs written");
        let names: Vec<String> = written
            .iter()
            .map(|p| p.strip_prefix(&dir).unwrap().display().to_string())
            .collect();
        for want in [
            "man/wanmux-x.1",
            "man/wanmux-x-run.1",
            "man/wanmux-x-check.1",
            "man/wanmux-x-status.1",
            "man/wanmux-x-keygen.1",
            "man/wanmux-x-pubkey.1",
            // A subcommand's subcommands, which its page names.
            "man/wanmux-x-tls-ca.1",
            "man/wanmux-x-tls-issue.1",
            "man/wanmux-x-tls-revoke.1",
            "completions/wanmux-x.bash",
            "completions/_wanmux-x",
            "completions/wanmux-x.fish",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        }
        // A hidden subcommand (the client's `tls`, which only names the node's) gets none.
        let hidden = super::super::Cli::command()
            .name("wanmux-y")
            .bin_name("wanmux-y")
            .mut_subcommand("tls", |c| c.hide(true));
        let hidden_dir = dir.join("hidden");
        let pages = generate(hidden, &hidden_dir).expect("docs written");
        assert!(
            !pages.iter().any(|p| p.to_string_lossy().contains("tls")),
            "{pages:?}"
        );
        for file in ["completions/wanmux-y.bash", "completions/wanmux-y.fish"] {
            let text = std::fs::read_to_string(hidden_dir.join(file)).unwrap();
            assert!(!text.contains("tls"), "{file}: {text}");
            assert!(text.contains("status"), "{file}: {text}");
        }
        let issue = std::fs::read_to_string(dir.join("man/wanmux-x-tls-issue.1")).unwrap();
        assert!(issue.contains("wanmux\\-x tls issue"), "{issue}");
        let run = std::fs::read_to_string(dir.join("man/wanmux-x-run.1")).unwrap();
        assert!(
            run.starts_with(".ie \\n(.g .ds Aq") || run.contains(".TH"),
            "{run}"
        );
        assert!(
            run.contains("wanmux\\-x\\-run") && run.contains("\\-\\-config"),
            "{run}"
        );
        let bash = std::fs::read_to_string(dir.join("completions/wanmux-x.bash")).unwrap();
        assert!(
            bash.contains("complete -F") && bash.contains("--log-format"),
            "{bash}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
