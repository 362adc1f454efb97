//! Running one scenario: Xen + dom0 under QEMU, events from the serial console.

use std::fs::File;
use std::io::{BufRead, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::artifacts::{copy, mkdir, pack_cpio, remove_dir, write};
use crate::command::{cmd, describe, run as run_cmd, tail};
use crate::events::{reconcile, Event, Report};
use crate::{Artifacts, LabConfig, LabError, Result};

/// Console lines after which nothing good can follow: stop at once.
const FATAL_CONSOLE_PATTERNS: &[&str] = &["Panic on CPU", "Kernel panic - not syncing"];
/// How long dom0 gets to reboot the machine (and so end QEMU) after the scenario ended.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);
/// Xen hotplug scripts of the project (paths from the checkout's root): they
/// ride in the payload's `xen-scripts/` and dom0's init installs them into
/// `/etc/xen/scripts/`.
const XEN_SCRIPTS: &[&str] = &["cas-blk/scripts/block-circ"];

/// The event channel: a virtio-serial port only dom0 writes (Xen writes to
/// the serial console too and can cut into a line there). Its name, as dom0
/// finds it in sysfs (tests/lab/dom0/lib.sh), and the file QEMU writes it to.
const EVENT_PORT: &str = "org.circular.lab.events";
const EVENT_FILE: &str = "events.channel";

/// Name, in the run directory, of the guest initrd the run shipped.
const GUEST_INITRD_COPY: &str = "guest-initrd.gz";
/// The guests' busybox rewritten for trusted system calls, in their `/bin`.
const REWRITTEN_BUSYBOX: &str = "busybox-tsys";

/// A scenario asks the host for values made fresh for each run (a
/// verifier's nonces, say) with a line `# circ-lab fresh: NAME...`. Each
/// value (32 random bytes, in hex) is written to the payload as
/// `/lab/host/NAME` and kept on the host as `RUN_DIR/host/NAME`, where the
/// host half (`LAB_HOST_VALUES`) reads it: dom0 cannot change the host's copy.
const FRESH_DECLARATION: &str = "# circ-lab fresh:";
const HOST_VALUES: &str = "host";

/// What to run and where to keep its logs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub scenario: String,
    /// Each run gets a fresh directory under this one.
    pub runs_dir: PathBuf,
    /// Host binaries copied into dom0's `/lab/bin` (the freshly built `circ`, daemons).
    pub binaries: Vec<PathBuf>,
}

/// Boots the lab and runs `opts.scenario`. Returns the report whether or not
/// the scenario passed (see [`Report::failure`]); errors mean the run itself
/// could not be set up.
pub fn run(
    config: &LabConfig,
    artifacts: &Artifacts,
    opts: &RunOptions,
) -> Result<(Report, PathBuf)> {
    let scenario = scenario_script(config, &opts.scenario)?;
    let run_dir = new_run_dir(
        &opts.runs_dir,
        &opts.scenario,
        &artifacts.flavor.to_string(),
    )?;
    tracing::info!(run_dir = %run_dir.display(), "run directory");

    let payload = run_dir.join("payload.img");
    build_payload(config, artifacts, opts, &scenario, &run_dir, &payload)?;

    let serial = run_dir.join("serial.log");
    write(&serial, b"")?;
    let channel = run_dir.join(EVENT_FILE);
    write(&channel, b"")?;
    let tpm = if config.machine.tpm {
        Some(start_swtpm(&run_dir)?)
    } else {
        None
    };
    let mut qemu = qemu_command(config, artifacts, &payload, &serial, &channel);
    if let Some(tpm) = &tpm {
        qemu.arg("-chardev")
            .arg(format!("socket,id=chrtpm,path={}", tpm.socket.display()))
            .args(["-tpmdev", "emulator,id=tpm0,chardev=chrtpm"])
            .args(["-device", "tpm-tis,tpmdev=tpm0"]);
    }
    let qemu_log = File::create(run_dir.join("qemu.log")).map_err(LabError::io(&run_dir))?;
    let qemu_err = qemu_log.try_clone().map_err(LabError::io(&run_dir))?;
    qemu.stdin(Stdio::null()).stdout(qemu_log).stderr(qemu_err);
    write(&run_dir.join("qemu.cmdline"), describe(&qemu).as_bytes())?;
    tracing::info!(xen = %artifacts.flavor, scenario = %opts.scenario, "booting Xen under QEMU");
    let child = qemu.spawn().map_err(|source| LabError::Spawn {
        command: describe(&qemu),
        source,
    })?;

    let mut report = Report {
        scenario: opts.scenario.clone(),
        xen: artifacts.flavor.to_string(),
        events: Vec::new(),
    };
    let timeout = Duration::from_secs(config.run.timeout_secs);
    let outcome = watch(KillOnDrop(child), &serial, &channel, timeout, &mut report);
    if let Err(reason) = outcome {
        report.events.push((0.0, Event::Fatal { reason }));
    }

    drop(tpm);
    extract_outputs(&payload, &run_dir);
    let host_script = scenario.with_extension("host.sh");
    if host_script.is_file() {
        run_host_checks(config, artifacts, opts, &host_script, &run_dir, &mut report)?;
    }
    let json = serde_json::to_vec_pretty(&report).unwrap_or_default();
    write(&run_dir.join("report.json"), &json)?;
    Ok((report, run_dir))
}

/// The script of scenario `name` (`tests/lab/scenarios/NAME.sh`).
pub fn scenario_script(config: &LabConfig, name: &str) -> Result<PathBuf> {
    let path = config
        .lab_dir()
        .join("scenarios")
        .join(format!("{name}.sh"));
    if !path.is_file() || name.contains('/') {
        return Err(LabError::UnknownScenario {
            name: name.to_owned(),
            path,
        });
    }
    Ok(path)
}

/// The last lines of a run's serial console, for failure messages.
pub fn console_tail(run_dir: &Path, bytes: usize) -> String {
    std::fs::read(run_dir.join("serial.log"))
        .map(|b| tail(&String::from_utf8_lossy(&b), bytes))
        .unwrap_or_default()
}

fn new_run_dir(runs_dir: &Path, scenario: &str, flavor: &str) -> Result<PathBuf> {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let dir = runs_dir.join(format!("{stamp}-{scenario}-{flavor}"));
    mkdir(&dir)?;
    Ok(dir)
}

/// The second disk dom0 sees (`/dev/vdb`, mounted at `/lab`): the lab init,
/// the scenario, the binaries under test and the guests' boot files. The
/// scenario writes its outputs to `/lab/out`, read back after the run.
fn build_payload(
    config: &LabConfig,
    artifacts: &Artifacts,
    opts: &RunOptions,
    scenario: &Path,
    run_dir: &Path,
    image: &Path,
) -> Result<()> {
    let lab = config.lab_dir();
    let stage = run_dir.join("payload");
    for dir in ["bin", "guest", "boot", "out"] {
        mkdir(&stage.join(dir))?;
    }
    copy(&lab.join("dom0/init"), &stage.join("init"))?;
    copy(&lab.join("dom0/lib.sh"), &stage.join("lib.sh"))?;
    copy(scenario, &stage.join("scenario.sh"))?;
    mkdir(&stage.join("xen-scripts"))?;
    for script in XEN_SCRIPTS {
        let from = config.root.join(script);
        if let Some(name) = from.file_name() {
            copy(&from, &stage.join("xen-scripts").join(name))?;
        }
    }
    write(&stage.join("scenario.name"), opts.scenario.as_bytes())?;
    make_fresh_values(
        scenario,
        &stage.join(HOST_VALUES),
        &run_dir.join(HOST_VALUES),
    )?;
    write(
        &stage.join("xen.flavor"),
        artifacts.flavor.to_string().as_bytes(),
    )?;
    let guest_extra = run_dir.join("guest-extra");
    for binary in &opts.binaries {
        let name = binary
            .file_name()
            .ok_or_else(|| LabError::MissingArtifact {
                what: "binary file name".into(),
                path: binary.clone(),
            })?;
        let into = if crate::GUEST_BINARIES.iter().any(|g| name == *g) {
            guest_extra.join("bin")
        } else {
            stage.join("bin")
        };
        mkdir(&into)?;
        copy(binary, &into.join(name))?;
    }
    if guest_extra.is_dir() {
        stage_rewritten_busybox(&artifacts.busybox, &guest_extra.join("bin"))?;
    }
    copy(&artifacts.vmlinuz, &stage.join("guest/vmlinuz"))?;
    let guest_initrd = stage.join("guest/initrd.gz");
    copy(&artifacts.guest_initrd, &guest_initrd)?;
    if guest_extra.is_dir() {
        // The cached busybox initrd plus this run's guest binaries, as one
        // archive: unpack, add, pack again (about a second).
        let tree = run_dir.join("guest-initrd");
        mkdir(&tree)?;
        run_cmd(
            cmd(
                "sh",
                [
                    "-c".as_ref(),
                    "gzip -dc \"$1\" | cpio -id --quiet".as_ref(),
                    "sh".as_ref(),
                    artifacts.guest_initrd.as_os_str(),
                ],
            )
            .current_dir(&tree),
        )?;
        run_cmd(&mut cmd(
            "cp",
            [
                "-a".as_ref(),
                guest_extra.join("bin").as_os_str(),
                tree.as_os_str(),
            ],
        ))?;
        pack_cpio(&tree, &guest_initrd)?;
        remove_dir(&tree)?;
        remove_dir(&guest_extra)?;
    }
    // The guests' initrd as this run ships it, for the host half of a
    // scenario (a policy of known-good files is built from it).
    copy(&guest_initrd, &run_dir.join(GUEST_INITRD_COPY))?;
    // What the machine booted, for scenarios that measure it.
    copy(&artifacts.xen, &stage.join("boot/xen"))?;
    copy(&artifacts.vmlinuz, &stage.join("boot/vmlinuz"))?;
    copy(&artifacts.dom0_initramfs, &stage.join("boot/initramfs.gz"))?;
    run_cmd(&mut cmd(
        "chmod",
        ["-R".as_ref(), "a+rX,u+w".as_ref(), stage.as_os_str()],
    ))?;
    run_cmd(&mut cmd(
        "chmod",
        ["0755".as_ref(), stage.join("init").as_os_str()],
    ))?;
    run_cmd(&mut cmd(
        "mke2fs",
        [
            "-q".as_ref(),
            "-t".as_ref(),
            "ext4".as_ref(),
            "-L".as_ref(),
            "circ-lab".as_ref(),
            "-d".as_ref(),
            stage.as_os_str(),
            image.as_os_str(),
            format!("{}M", config.machine.payload_size_mib).as_ref(),
        ],
    ))?;
    remove_dir(&stage)
}

/// The names a scenario declares with [`FRESH_DECLARATION`].
fn fresh_value_names(script: &str) -> std::result::Result<Vec<&str>, String> {
    let mut names = Vec::new();
    for line in script.lines() {
        let Some(list) = line.strip_prefix(FRESH_DECLARATION) else {
            continue;
        };
        for name in list.split_whitespace() {
            let valid = name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid {
                return Err(format!(
                    "`{name}` in `{FRESH_DECLARATION}` is not a name (letters, digits, - and _)"
                ));
            }
            if names.contains(&name) {
                return Err(format!("`{name}` is declared twice"));
            }
            names.push(name);
        }
    }
    Ok(names)
}

/// Makes the values `scenario` declares, into both directories.
fn make_fresh_values(scenario: &Path, payload_dir: &Path, host_dir: &Path) -> Result<()> {
    let script = std::fs::read_to_string(scenario).map_err(LabError::io(scenario))?;
    let names = fresh_value_names(&script).map_err(|why| LabError::BadScenario {
        path: scenario.to_owned(),
        why,
    })?;
    if names.is_empty() {
        return Ok(());
    }
    mkdir(payload_dir)?;
    mkdir(host_dir)?;
    let urandom = Path::new("/dev/urandom");
    let mut random = File::open(urandom).map_err(LabError::io(urandom))?;
    for name in names {
        let mut bytes = [0u8; 32];
        random
            .read_exact(&mut bytes)
            .map_err(LabError::io(urandom))?;
        let value: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let value = format!("{value}\n");
        write(&payload_dir.join(name), value.as_bytes())?;
        write(&host_dir.join(name), value.as_bytes())?;
    }
    Ok(())
}

fn qemu_command(
    config: &LabConfig,
    artifacts: &Artifacts,
    payload: &Path,
    serial: &Path,
    channel: &Path,
) -> Command {
    let machine = &config.machine;
    let mut qemu = Command::new(&machine.qemu);
    qemu.args(["-accel", &machine.accel])
        .args(["-smp", &machine.cpus.to_string()])
        .args(["-cpu", &machine.cpu])
        .args(["-m", &machine.memory_mib.to_string()])
        .args(["-display", "none", "-vga", "none", "-monitor", "none"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        // No NIC: nothing in the lab may reach beyond this machine.
        .args(["-nic", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(&artifacts.xen)
        .args(["-append", &machine.xen_cmdline])
        .arg("-initrd")
        // Multiboot modules: the dom0 kernel with its command line, then its initramfs.
        .arg(format!(
            "{} {},{}",
            artifacts.vmlinuz.display(),
            machine.dom0_cmdline,
            artifacts.dom0_initramfs.display()
        ))
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio,snapshot=on",
            artifacts.rootfs.display()
        ))
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", payload.display()))
        // The event channel (see EVENT_PORT).
        .args(["-device", "virtio-serial-pci,id=labser"])
        .arg("-chardev")
        .arg(format!("file,id=labevents,path={}", channel.display()))
        .args([
            "-device",
            &format!("virtserialport,bus=labser.0,chardev=labevents,name={EVENT_PORT}"),
        ]);
    qemu
}

/// Ends a child process (QEMU, swtpm) on every path out of a run, including errors and panics.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Follows the event channel and the serial console until the scenario
/// ends and QEMU exits, the console shows a panic, or the time limit passes.
/// The verdict comes from the channel; afterwards every event the console
/// showed must be one the channel carried (see [`reconcile`]).
fn watch(
    mut qemu: KillOnDrop,
    serial: &Path,
    channel: &Path,
    timeout: Duration,
    report: &mut Report,
) -> std::result::Result<(), String> {
    let started = Instant::now();
    let mut console = LineFollower::open(serial)?;
    let mut events = LineFollower::open(channel)?;
    let mut console_events = Vec::new();
    let mut garbled = 0usize;
    let mut bad_lines = Vec::new();
    let mut ended_at: Option<Instant> = None;
    let mut read_all = |report: &mut Report,
                        ended_at: &mut Option<Instant>|
     -> std::result::Result<(), String> {
        for line in console.lines()? {
            if line.contains(crate::events::MARKER) {
                match Event::parse_line(&line) {
                    Some(event) => {
                        if matches!(event, Event::End { .. } | Event::Fatal { .. }) {
                            ended_at.get_or_insert_with(Instant::now);
                        }
                        console_events.push(event);
                    }
                    // Cut by Xen's output: the channel has the whole line.
                    None => garbled += 1,
                }
            } else if let Some(pattern) = FATAL_CONSOLE_PATTERNS.iter().find(|p| line.contains(**p))
            {
                // Let the rest of the panic message reach the log first.
                std::thread::sleep(Duration::from_secs(2));
                return Err(format!("console shows `{pattern}`"));
            }
        }
        for line in events.lines()? {
            match Event::parse_line(&line) {
                Some(event) => {
                    log_event(&event);
                    if matches!(event, Event::End { .. } | Event::Fatal { .. }) {
                        ended_at.get_or_insert_with(Instant::now);
                    }
                    report.events.push((started.elapsed().as_secs_f64(), event));
                }
                None => bad_lines.push(line),
            }
        }
        Ok(())
    };
    let outcome = loop {
        if let Err(e) = read_all(report, &mut ended_at) {
            break Err(e);
        }
        match qemu.0.try_wait() {
            Ok(Some(status)) if ended_at.is_some() => {
                tracing::debug!(%status, "QEMU exited");
                break Ok(());
            }
            Ok(Some(status)) => {
                break Err(format!("QEMU exited ({status}) before the scenario ended"))
            }
            Ok(None) => {}
            Err(e) => break Err(format!("waiting for QEMU: {e}")),
        }
        if ended_at.is_some_and(|at| at.elapsed() > SHUTDOWN_GRACE) {
            tracing::warn!("dom0 did not power the machine off after the scenario; killing QEMU");
            break Ok(());
        }
        if started.elapsed() > timeout {
            break Err(format!("time limit of {} s reached", timeout.as_secs()));
        }
        std::thread::sleep(POLL);
    };
    // What was written just before QEMU stopped.
    drop(qemu);
    let last = read_all(report, &mut ended_at);
    outcome?;
    last?;
    let carried: Vec<Event> = report.events.iter().map(|(_, e)| e.clone()).collect();
    if garbled > 0 {
        report.events.push((
            started.elapsed().as_secs_f64(),
            Event::Info {
                name: "console event lines cut by other output (whole on the channel)".into(),
                value: garbled.into(),
            },
        ));
    }
    reconcile(&carried, &console_events, &bad_lines)
}

/// Reads a file another process appends to, one complete line at a time.
struct LineFollower {
    reader: BufReader<File>,
    partial: Vec<u8>,
}

impl LineFollower {
    fn open(path: &Path) -> std::result::Result<Self, String> {
        let file = File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Ok(Self {
            reader: BufReader::new(file),
            partial: Vec::new(),
        })
    }

    /// The lines completed since the last call, without their newline.
    fn lines(&mut self) -> std::result::Result<Vec<String>, String> {
        let mut lines = Vec::new();
        loop {
            match self.reader.read_until(b'\n', &mut self.partial) {
                Ok(0) => return Ok(lines),
                Ok(_) if self.partial.ends_with(b"\n") => {
                    let line = String::from_utf8_lossy(&self.partial);
                    lines.push(line.trim_end().to_owned());
                    self.partial.clear();
                }
                // A line still being written: keep what came, read on later.
                Ok(_) => return Ok(lines),
                Err(e) => return Err(format!("reading the console: {e}")),
            }
        }
    }
}

fn log_event(event: &Event) {
    match event {
        Event::Boot { uptime_ms } => tracing::info!(dom0_uptime_ms = uptime_ms, "dom0 is up"),
        Event::Check { name, ok, detail } => tracing::info!(check = %name, ok, %detail, "check"),
        Event::Timing { name, ms } => tracing::info!(timing = %name, ms, "timing"),
        Event::Info { name, value } => tracing::info!(info = %name, %value, "info"),
        Event::End { status } => tracing::info!(status, "scenario ended"),
        Event::Fatal { reason } => tracing::error!(%reason, "fatal"),
    }
}

/// Copies `/out` of the payload disk (the scenario's logs) into the run directory.
fn extract_outputs(payload: &Path, run_dir: &Path) {
    // A run cut short (time limit, a hung scenario) leaves dom0's writes in
    // the journal, where debugfs does not look: replay it first. e2fsck
    // exits 1 when it replayed something, so only a failure to run counts.
    let replay = cmd(
        "e2fsck",
        [
            "-y".as_ref(),
            "-E".as_ref(),
            "journal_only".as_ref(),
            payload.as_os_str(),
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .status();
    if let Err(err) = replay {
        tracing::warn!(%err, "could not replay the payload's journal (e2fsck)");
    }
    let request = format!("rdump /out {}", run_dir.display());
    let result = run_cmd(&mut cmd(
        "debugfs",
        ["-R".as_ref(), request.as_ref(), payload.as_os_str()],
    ));
    if let Err(err) = result {
        tracing::warn!(%err, "could not read the scenario's outputs back");
    }
}

/// A software TPM for dom0 (QEMU's TPM TIS device talks to it), fresh each
/// run so PCRs start from reset. Killed with the run.
struct Swtpm {
    socket: PathBuf,
    _process: KillOnDrop,
}

fn start_swtpm(run_dir: &Path) -> Result<Swtpm> {
    let state = run_dir.join("tpm");
    mkdir(&state)?;
    let socket = run_dir.join("swtpm.sock");
    let mut swtpm = cmd(
        "swtpm",
        [
            "socket".as_ref(),
            "--tpm2".as_ref(),
            "--tpmstate".as_ref(),
            format!("dir={}", state.display()).as_ref(),
            "--ctrl".as_ref(),
            format!("type=unixio,path={}", socket.display()).as_ref(),
            "--log".as_ref(),
            format!("file={},level=1", run_dir.join("swtpm.log").display()).as_ref(),
            std::ffi::OsStr::new("--terminate"),
        ],
    );
    swtpm.stdin(Stdio::null());
    let child = swtpm.spawn().map_err(|source| LabError::Spawn {
        command: describe(&swtpm),
        source,
    })?;
    let process = KillOnDrop(child);
    // QEMU fails at once if the socket is not there yet.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        if Instant::now() > deadline {
            return Err(LabError::MissingArtifact {
                what: "swtpm control socket (see swtpm.log)".into(),
                path: socket,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Swtpm {
        socket,
        _process: process,
    })
}

/// Runs the scenario's host half (`NAME.host.sh`) after the machine is down:
/// checks that must happen outside the lab, such as verifying a quote. It
/// reports events on stdout with the same library as the dom0 half.
fn run_host_checks(
    config: &LabConfig,
    artifacts: &Artifacts,
    opts: &RunOptions,
    script: &Path,
    run_dir: &Path,
    report: &mut Report,
) -> Result<()> {
    let lab = config.lab_dir();
    let mut host = Command::new("bash");
    host.arg(script)
        .current_dir(run_dir)
        .env("LAB_HOST", "1")
        .env("LAB_LIB", lab.join("dom0/lib.sh"))
        .env("LAB_OUT", run_dir.join("out"))
        .env("LAB_RUN_DIR", run_dir)
        .env("LAB_HOST_VALUES", run_dir.join(HOST_VALUES))
        .env("LAB_XEN", artifacts.flavor.to_string())
        .env("LAB_BOOT_XEN", &artifacts.xen)
        .env("LAB_BOOT_VMLINUZ", &artifacts.vmlinuz)
        .env("LAB_BOOT_INITRAMFS", &artifacts.dom0_initramfs)
        .env("LAB_GUEST_VMLINUZ", &artifacts.vmlinuz)
        .env("LAB_GUEST_INITRD", run_dir.join(GUEST_INITRD_COPY));
    if let Some(circ) = opts.binaries.first() {
        host.env("CIRC", circ);
    }
    let log = File::create(run_dir.join("host.log")).map_err(LabError::io(run_dir))?;
    host.stdin(Stdio::null()).stderr(log);
    tracing::info!(script = %script.display(), "host-side checks");
    let out = host.output().map_err(|source| LabError::Spawn {
        command: describe(&host),
        source,
    })?;
    let started = Instant::now();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(event) = Event::parse_line(line) {
            log_event(&event);
            report.events.push((started.elapsed().as_secs_f64(), event));
        }
    }
    report.events.push((
        0.0,
        Event::Check {
            name: "host-side checks finished".into(),
            ok: out.status.success(),
            detail: format!("{} exited with {}", script.display(), out.status),
        },
    ));
    Ok(())
}

/// The guests' busybox with its `syscall`s rewritten into `int $0x81` by
/// the project's rewriter, as `/bin/busybox-tsys`, for the `tsys`
/// scenario's applets run through `circ-tsys-launch`.
fn stage_rewritten_busybox(busybox: &Path, bin: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let bytes = std::fs::read(busybox).map_err(LabError::io(busybox))?;
    let rewritten = circ_tsys_rewrite::rewrite(&bytes, &Default::default()).map_err(|e| {
        LabError::BadBinary {
            path: busybox.to_owned(),
            why: format!("the tsys rewriter refuses it: {e}"),
        }
    })?;
    let out = bin.join(REWRITTEN_BUSYBOX);
    write(&out, &rewritten.bytes)?;
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o755))
        .map_err(LabError::io(&out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_values_are_declared_by_name() {
        let script =
            "#!/bin/bash\n# circ-lab fresh: nonce-good nonce-evil\n# circ-lab fresh: x_1\necho\n";
        assert_eq!(
            fresh_value_names(script),
            Ok(vec!["nonce-good", "nonce-evil", "x_1"])
        );
        assert_eq!(fresh_value_names("echo\n"), Ok(vec![]));
        assert!(fresh_value_names("# circ-lab fresh: ../etc\n").is_err());
        assert!(fresh_value_names("# circ-lab fresh: a a\n").is_err());
    }

    #[test]
    fn each_run_gets_new_values_the_host_keeps_a_copy_of() {
        let dir = tempfile::tempdir().unwrap();
        let scenario = dir.path().join("s.sh");
        std::fs::write(&scenario, "# circ-lab fresh: n1 n2\n").unwrap();
        let value = |d: &str, n: &str| std::fs::read_to_string(dir.path().join(d).join(n)).unwrap();
        make_fresh_values(&scenario, &dir.path().join("p1"), &dir.path().join("h1")).unwrap();
        make_fresh_values(&scenario, &dir.path().join("p2"), &dir.path().join("h2")).unwrap();
        assert_eq!(value("p1", "n1"), value("h1", "n1"));
        assert_eq!(value("p1", "n1").trim().len(), 64);
        assert_ne!(value("p1", "n1"), value("p1", "n2"));
        assert_ne!(value("h1", "n1"), value("h2", "n1"), "fresh each run");
    }
}
