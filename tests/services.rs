//! End-to-end tests of `[services]`, run as the unprivileged test user against real service
//! images (PostgreSQL 15 and Redis 7 from Debian's packages, built by scripts/test with
//! mmdebstrap): the env's private network, names, volumes, published ports, readiness,
//! lifecycle (`up`, `down`, the last session, SIGKILL), and a real browser on JupyterLab.

mod common;

use std::time::Duration;

use common::services::{postgres_image, redis_image};
use common::{Outcome, TestHome, devenv, run};

fn devenv_in(home: &TestHome, args: &[&str]) -> Outcome {
    run(devenv(home).current_dir(home.project()).args(args))
}

/// The Redis service every test here can use: no persistence, loopback only.
fn redis_service() -> String {
    format!(
        "[services.cache]\nimage = \"{}\"\ncommand = [\"redis-server\", \"--bind\", \"127.0.0.1\", \
         \"--port\", \"6379\", \"--save\", \"\"]\nready = \"tcp:6379\"\n",
        redis_image()
    )
}

/// PostgreSQL with its data in a volume, initialised at its first start; ready when
/// `pg_isready` (run in a container of its own) says so.
fn postgres_service() -> String {
    format!(
        "[services.db]\nimage = \"{}\"\nuser = \"postgres\"\ncommand = [\"sh\", \"-c\", \"test -s \
         /var/lib/postgresql/data/PG_VERSION || /usr/lib/postgresql/15/bin/initdb -D \
         /var/lib/postgresql/data -A trust -U postgres >/dev/null; exec \
         /usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/data -c \
         listen_addresses=127.0.0.1 -k /tmp\"]\nvolumes = [\"pgdata:/var/lib/postgresql/data\"]\n\
         ready = [\"/usr/lib/postgresql/15/bin/pg_isready\", \"-q\", \"-h\", \"127.0.0.1\"]\n",
        postgres_image()
    )
}

/// The env's own image: the PostgreSQL image, which has psql, redis-cli and python3-redis.
fn project(home: &TestHome, services: &str) {
    home.write(
        "project/env.toml",
        format!("[image]\nbase = \"{}\"\n\n{services}", postgres_image()),
    );
}

/// The env's supervisor (`devenv __services` started with this home's store) and every process
/// below it: its services, their helpers and PID 1s.
fn env_processes(home: &TestHome) -> Vec<u32> {
    let store = format!("DEVENV_HOME={}", home.store().display());
    let mut all: Vec<(u32, u32)> = Vec::new();
    let mut roots = Vec::new();
    for entry in fs_err::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = fs_err::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat[i + 2..].split(' ').nth(1))
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        all.push((pid, ppid));
        let cmdline = fs_err::read(entry.path().join("cmdline")).unwrap_or_default();
        let environ = fs_err::read(entry.path().join("environ")).unwrap_or_default();
        let has = |hay: &[u8], needle: &[u8]| hay.split(|b| *b == 0).any(|w| w == needle);
        if has(&cmdline, b"__services") && has(&environ, store.as_bytes()) {
            roots.push(pid);
        }
    }
    let mut tree = roots;
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(all.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    tree
}

/// Wait until the env's supervisor and everything below it have ended.
fn assert_env_gone(home: &TestHome) {
    common::env::wait_for(
        "the env's processes to end",
        Duration::from_secs(20),
        || env_processes(home).is_empty(),
    );
}

#[test]
fn the_shell_reaches_redis_by_name_and_the_service_stops_with_the_session() {
    let home = TestHome::new();
    project(&home, &redis_service());
    let out = devenv_in(&home, &["run", "--", "redis-cli", "-h", "cache", "ping"]).success();
    assert_eq!(out.stdout.trim(), "PONG", "{out:?}");
    let code = "import redis; r = redis.Redis(host='cache'); r.set('k', 'from python'); \
                print(r.get('k').decode())";
    let out = devenv_in(&home, &["run", "--", "python3", "-c", code]).success();
    assert_eq!(out.stdout.trim(), "from python", "{out:?}");
    // The last session is gone: so are the service and its supervisor, which stopped on its
    // own (its log says so: the process search above found the real one).
    assert_env_gone(&home);
    let envs = fs_err::read_dir(home.store().join("envs")).unwrap();
    let log: String = envs
        .flatten()
        .filter_map(|e| fs_err::read_to_string(e.path().join("services/supervisor.log")).ok())
        .collect();
    assert!(log.contains("ready") && log.contains("stopped"), "{log}");
}

/// A port nothing on this machine listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_row_in_postgres_survives_down_and_up_and_psql_reaches_it_by_name() {
    let home = TestHome::new();
    project(&home, &postgres_service());
    devenv_in(&home, &["up"]).success();
    let psql = |sql: &str| {
        devenv_in(
            &home,
            &[
                "run", "--", "psql", "-h", "db", "-U", "postgres", "-tAc", sql,
            ],
        )
        .success()
        .stdout
        .trim()
        .to_string()
    };
    assert_eq!(psql("select 1"), "1");
    psql("create table notes (body text); insert into notes values ('kept')");
    let status = devenv_in(&home, &["status"]).success();
    assert!(
        status.stdout.contains("db") && status.stdout.contains("ready"),
        "{status:?}"
    );
    let logs = devenv_in(&home, &["logs", "db"]).success();
    assert!(
        logs.stdout
            .contains("database system is ready to accept connections"),
        "{logs:?}"
    );
    // Without a name, every service's lines, each after its name, as `docker compose logs`.
    let all = devenv_in(&home, &["logs"]).success();
    assert!(
        all.stdout
            .lines()
            .any(|l| l.starts_with("db | ") && l.contains("ready to accept connections")),
        "{all:?}"
    );
    assert!(
        all.stdout.lines().all(|l| l.starts_with("db | ")),
        "{all:?}"
    );
    // `logs -f` follows until the services stop, then ends by itself.
    let (follow, follow_what) = common::spawn(
        devenv(&home)
            .current_dir(home.project())
            .args(["logs", "-f", "db"]),
    );
    std::thread::sleep(Duration::from_millis(500));
    devenv_in(&home, &["down"]).success();
    let followed = common::wait(follow, follow_what).success();
    assert!(
        followed.stdout.contains("database system is shut down"),
        "{followed:?}"
    );
    assert!(
        env_processes(&home).is_empty(),
        "down left processes running"
    );
    let status = devenv_in(&home, &["status"]).success();
    assert!(status.stdout.contains("service  db  stopped"), "{status:?}");
    // gc keeps the service's image (the env's project is there): up needs no registry.
    devenv_in(&home, &["gc"]).success();
    devenv_in(&home, &["--offline", "up"]).success();
    assert_eq!(psql("select body from notes"), "kept");
    devenv_in(&home, &["down"]).success();
    devenv_in(&home, &["down"]).success();
}

#[test]
fn a_published_port_answers_on_the_host_and_the_host_loopback_stays_outside() {
    let home = TestHome::new();
    let port = free_port();
    project(
        &home,
        &redis_service().replace("ready = ", &format!("ports = [\"{port}:6379\"]\nready = ")),
    );
    // A listener on the host's loopback, which the env must not reach.
    let host = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host_port = host.local_addr().unwrap().port();
    devenv_in(&home, &["up"]).success();
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("the published port");
    use std::io::{Read, Write};
    conn.write_all(b"PING\r\n").unwrap();
    let mut buf = [0u8; 7];
    conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"+PONG\r\n");
    let code = format!(
        "import socket\ntry:\n    socket.create_connection(('127.0.0.1', {host_port}), 2)\n    \
         print('reached')\nexcept OSError as e:\n    print('refused', e.errno)"
    );
    let out = devenv_in(&home, &["run", "--", "python3", "-c", &code]).success();
    assert!(out.stdout.starts_with("refused"), "{out:?}");
    devenv_in(&home, &["down"]).success();
    // A host port another program holds: the start fails naming it, and nothing is left.
    project(
        &home,
        &redis_service().replace(
            "ready = ",
            &format!("ports = [\"{host_port}:6379\"]\nready = "),
        ),
    );
    let out = devenv_in(&home, &["run", "--", "true"]).failure(&[
        &format!("publishing port 6379 of [services.cache] on the host's 127.0.0.1:{host_port}"),
        "another program listens there",
    ]);
    assert_eq!(out.errors(), 1, "{out:?}");
    assert_env_gone(&home);
    drop(host);
}

#[test]
fn a_service_that_exits_or_is_never_ready_stops_the_start_with_its_log() {
    let home = TestHome::new();
    project(
        &home,
        &format!(
            "[services.broken]\nimage = \"{}\"\ncommand = \"echo broken-marker-42 >&2; exit 3\"\n\
             ready = \"tcp:7000\"\n",
            redis_image()
        ),
    );
    let out = devenv_in(&home, &["run", "--", "true"]).failure(&["broken", "exited", "status 3"]);
    assert!(out.stderr.contains("broken-marker-42"), "{out:?}");
    assert!(
        out.stderr
            .contains("hint: the whole log: `devenv logs NAME`"),
        "{out:?}"
    );
    assert_eq!(out.errors(), 1, "{out:?}");

    project(
        &home,
        &format!(
            "[services.slow]\nimage = \"{}\"\ncommand = \"echo waiting-marker; exec sleep 600\"\n\
             ready = \"tcp:7001\"\nready_timeout = 2\n",
            redis_image()
        ),
    );
    let out = devenv_in(&home, &["run", "--", "true"]).failure(&["slow", "not ready after 2 s"]);
    assert!(out.stderr.contains("waiting-marker"), "{out:?}");
    assert_env_gone(&home);
}

#[test]
fn two_sessions_share_one_set_of_services_and_sigkill_leaves_nothing_running() {
    let home = TestHome::new();
    project(&home, &redis_service());
    // Session A sets a key and stays; session B reads it from the same Redis.
    let (a, a_what) = common::spawn(devenv(&home).current_dir(home.project()).args([
        "run",
        "--",
        "sh",
        "-c",
        "redis-cli -h cache set shared yes >/dev/null; sleep 600",
    ]));
    let a_pid = a.id();
    common::env::wait_for("session A's key", Duration::from_secs(60), || {
        !env_processes(&home).is_empty()
            && run(devenv(&home).current_dir(home.project()).args([
                "run",
                "--",
                "redis-cli",
                "-h",
                "cache",
                "get",
                "shared",
            ]))
            .stdout
            .trim()
                == "yes"
    });
    let supervisors = env_processes(&home);
    assert!(!supervisors.is_empty());
    // SIGKILL of the session: nobody tells the supervisor; its end of the socket does.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(a_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = common::wait(a, a_what);
    assert_env_gone(&home);

    // SIGKILL of the supervisor itself (and of every devenv of the env): the services die
    // with it (parent-death signals), none is left running.
    devenv_in(&home, &["up"]).success();
    let before = env_processes(&home);
    assert!(before.len() > 1, "{before:?}");
    for pid in &before {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    common::env::wait_for(
        "every process of the env to end",
        Duration::from_secs(20),
        || {
            before.iter().all(|p| {
                !std::path::Path::new(&format!("/proc/{p}")).exists()
                    || fs_err::read_to_string(format!("/proc/{p}/stat"))
                        .is_ok_and(|s| s.contains(") Z "))
            })
        },
    );
    // What they left (a socket nobody listens on) does not stop the next session.
    let out = devenv_in(&home, &["run", "--", "redis-cli", "-h", "cache", "ping"]).success();
    assert_eq!(out.stdout.trim(), "PONG", "{out:?}");
}

/// This machine's first non-loopback IPv4 address: what the env reaches through slirp4netns
/// as it would reach any other host.
fn outside_address() -> std::net::Ipv4Addr {
    nix::ifaddrs::getifaddrs()
        .unwrap()
        .filter_map(|i| i.address?.as_sockaddr_in().map(|a| a.ip()))
        .find(|ip| !ip.is_loopback())
        .expect("this test needs a network interface with an IPv4 address besides lo")
}

#[test]
fn the_private_network_reaches_out_through_slirp4netns_but_not_the_host_loopback() {
    let home = TestHome::new();
    project(&home, &redis_service());
    let ip = outside_address();
    let server = std::net::TcpListener::bind((ip, 0)).unwrap();
    let port = server.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in server.incoming().flatten() {
            use std::io::Write;
            let _ = (&c).write_all(b"hello from outside\n");
        }
    });
    // slirp4netns's gateway stands for the host's loopback unless told not to.
    let loopback = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let lo_port = loopback.local_addr().unwrap().port();
    let code = format!(
        "import socket\ns = socket.create_connection(('{ip}', {port}), 5)\n\
         print(s.recv(64).decode().strip())\ntry:\n    \
         socket.create_connection(('10.0.2.2', {lo_port}), 3)\n    print('loopback reached')\n\
         except OSError:\n    print('loopback closed')"
    );
    let out = devenv_in(&home, &["run", "--", "python3", "-c", &code]).success();
    assert_eq!(
        out.stdout.trim(),
        "hello from outside\nloopback closed",
        "{out:?}"
    );
    drop(loopback);
    assert!(!out.stderr.contains("no way out"), "{out:?}");
}

/// The browser check: JupyterLab in the env, on its private network, published on the
/// host's 127.0.0.1, rendered by a real headless Chromium on the host. Writes the screenshot to
/// `$DEVENV_TEST_SCREENSHOT` when set (docs/services.md shows one).
#[test]
fn jupyterlab_in_the_env_renders_in_chromium_through_the_published_port() {
    let home = TestHome::new();
    let port = free_port();
    home.write(
        "project/env.toml",
        format!(
            "[image]\nbase = \"{}\"\n\n[packages]\npip = [\"jupyterlab==4.2.5\"]\n\n\
             [container]\nports = [\"{port}:8888\"]\n",
            common::bookworm_image()
        ),
    );
    devenv_in(&home, &["build"]).success();
    let (lab, lab_what) = common::spawn(devenv(&home).current_dir(home.project()).args([
        "run",
        "--",
        "jupyter",
        "lab",
        "--no-browser",
        "--ip",
        "127.0.0.1",
        "--port",
        "8888",
        "--ServerApp.token=",
        "--ServerApp.password=",
    ]));
    let url = format!("http://127.0.0.1:{port}/lab");
    common::env::wait_for(
        "JupyterLab on the published port",
        Duration::from_secs(90),
        || {
            use std::io::{Read, Write};
            let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                return false;
            };
            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = c.write_all(b"GET /lab HTTP/1.0\r\n\r\n");
            let mut head = [0u8; 12];
            c.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
        },
    );
    let dom = common::services::chromium_dom(&url);
    let png = std::env::var_os("DEVENV_TEST_SCREENSHOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| home.root().join("jupyterlab.png"));
    common::services::chromium_screenshot(&url, &png);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(lab.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = common::wait(lab, lab_what);
    assert!(
        dom.contains(common::services::JUPYTERLAB_MARKER),
        "JupyterLab's application shell is not in the rendered page:\n{}",
        &dom[..dom.len().min(2000)]
    );
    assert!(fs_err::metadata(&png).unwrap().len() > 10_000, "screenshot");
}

/// `devenv doctor --json`'s `outbound` check warns, saying `why`.
#[track_caller]
fn assert_outbound_warns(doctor: &Outcome, why: &str) {
    let report: serde_json::Value = serde_json::from_str(&doctor.stdout).expect("doctor --json");
    let outbound = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "outbound")
        .cloned()
        .unwrap_or_default();
    assert_eq!(outbound["status"], "warn", "{doctor:?}");
    assert!(
        outbound["detail"]
            .as_str()
            .unwrap_or_default()
            .contains(why),
        "{doctor:?}"
    );
}

#[test]
fn without_slirp4netns_the_env_still_starts_and_says_once_there_is_no_way_out() {
    let home = TestHome::new();
    project(&home, &redis_service());
    // A PATH without slirp4netns: the supervisor (which inherits it) finds none.
    let empty = home.mkdir("empty-path");
    let with_path = |args: &[&str]| {
        run(devenv(&home)
            .current_dir(home.project())
            .env("PATH", &empty)
            .args(args))
    };
    let up = with_path(&["up"]).success();
    assert!(
        up.stderr.contains("no way out") && up.stderr.contains("apt install slirp4netns"),
        "{up:?}"
    );
    let out = with_path(&["run", "--", "redis-cli", "-h", "cache", "ping"]).success();
    assert_eq!(out.stdout.trim(), "PONG", "{out:?}");
    assert!(!out.stderr.contains("no way out"), "said twice: {out:?}");
    let doctor = run(devenv(&home)
        .current_dir(home.project())
        .env("PATH", &empty)
        .args(["doctor", "--json"]));
    assert_outbound_warns(&doctor, "slirp4netns is not installed");
    // And env.toml changed under running services: the next session says so.
    project(
        &home,
        &redis_service().replace("ready = ", "env = { CHANGED = \"1\" }\nready = "),
    );
    let out = with_path(&["run", "--", "true"]).success();
    assert!(
        out.stderr.contains("started from another env.toml"),
        "{out:?}"
    );
    with_path(&["down"]).success();
}

/// Where `/dev/net/tun` is as the kernel leaves it without udev (root's, 0600), the env starts
/// without a way out and says so once, with the fix; the services work all the same, a later
/// session says nothing more, and doctor warns the same.
#[test]
fn a_tun_device_the_user_cannot_open_is_said_once_with_the_fix() {
    use common::services::with_tun_root_only;
    let home = TestHome::new();
    project(&home, &redis_service());
    let dev = home.mkdir("dev");
    let mut up = devenv(&home);
    up.current_dir(home.project()).arg("up");
    let up = run(&mut with_tun_root_only(&up, &dev)).success();
    for said in [
        "no way out",
        "/dev/net/tun is not usable by this user",
        "chmod 0666 /dev/net/tun",
    ] {
        assert!(up.stderr.contains(said), "{said}: {up:?}");
    }
    let out = devenv_in(&home, &["run", "--", "redis-cli", "-h", "cache", "ping"]).success();
    assert_eq!(out.stdout.trim(), "PONG", "{out:?}");
    assert!(!out.stderr.contains("no way out"), "said twice: {out:?}");
    let mut doctor = devenv(&home);
    doctor
        .current_dir(home.project())
        .args(["doctor", "--json"]);
    let doctor = run(&mut with_tun_root_only(&doctor, &dev));
    assert_outbound_warns(&doctor, "/dev/net/tun is not usable by this user");
    devenv_in(&home, &["down"]).success();
    assert_env_gone(&home);
}

#[test]
fn an_interactive_shell_on_a_terminal_reaches_the_services() {
    let home = TestHome::new();
    project(
        &home,
        &format!("[container]\nshell = \"/bin/sh\"\n\n{}", redis_service()),
    );
    let mut cmd = devenv(&home);
    cmd.current_dir(home.project())
        .env("TERM", "dumb")
        .arg("shell");
    let mut s = common::env::PtySession::spawn(cmd);
    s.expect("devenv:project", Duration::from_secs(120));
    s.type_str("[ -t 0 ] && echo term-$((1+1)); redis-cli -h cache ping\n");
    s.expect("term-2", Duration::from_secs(20));
    s.expect("PONG", Duration::from_secs(20));
    s.type_str("exit 3\n");
    let (status, output) = s.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(3), "terminal showed:\n{output}");
    assert_env_gone(&home);
}

/// The example of outbound traffic: pip inside a private network downloads from the
/// index the image's pip is configured with (DNS through slirp4netns's resolver, TLS with the
/// host's CA bundle). No services: `network = "private"` alone.
#[test]
fn pip_inside_a_private_network_downloads_through_slirp4netns() {
    let home = TestHome::new();
    home.write(
        "project/env.toml",
        format!(
            "[image]\nbase = \"{}\"\n\n[container]\nnetwork = \"private\"\n",
            common::bookworm_image()
        ),
    );
    let out = devenv_in(
        &home,
        &[
            "run",
            "--",
            "python3",
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "-d",
            "/tmp/dl",
            "six==1.16.0",
        ],
    )
    .success();
    assert!(out.stdout.contains("six-1.16.0"), "{out:?}");
}

#[test]
fn sigterm_to_the_supervisor_stops_the_services_cleanly() {
    let home = TestHome::new();
    project(&home, &postgres_service());
    devenv_in(&home, &["up"]).success();
    let tree = env_processes(&home);
    let supervisor = tree[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(supervisor as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_env_gone(&home);
    // PostgreSQL got SIGTERM (a smart shutdown), not SIGKILL.
    let logs = devenv_in(&home, &["logs", "db"]).success();
    assert!(
        logs.stdout.contains("database system is shut down"),
        "{logs:?}"
    );
    let status = devenv_in(&home, &["status"]).success();
    assert!(status.stdout.contains("service  db  stopped"), "{status:?}");
}
