//! What the cluster demo shows, step by step, with the evidence printed: which node each
//! connection landed on (from the node's access log, by the client's port), which server
//! answered, and whether the nodes' pinned tables agree.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _};
use netns_kit::Cluster;

use super::nodes::{node_name, Nodes};

/// How long the peers may take to meet, to mirror a session, or to agree after a heal (which
/// first waits for the dead-peer timeout of 5 s and the redial).
const SYNC_LIMIT: Duration = Duration::from_secs(20);
/// Sessions made in the first step: the original demo's first 14 cookies.
const SESSIONS: u32 = 14;

/// One exchange seen from the client.
struct Answer {
    /// The client's port: what finds the connection in a node's access log ([`get_on`]).
    port: u16,
    /// "Backend N".
    body: String,
    set_cookie: Option<String>,
}

pub(super) fn play(cluster: &Cluster, nodes: &mut Nodes) -> anyhow::Result<()> {
    let n = cluster.nodes.len();
    step(&format!(
        "every node opens a peers session with each of the {} others (a full mesh)",
        n - 1
    ));
    wait(SYNC_LIMIT, "the full mesh", || Ok(full_mesh(nodes, n)))?;
    println!("  all {} peer sessions up", n * (n - 1) / 2);

    step(&format!(
        "{SESSIONS} new sessions (the original demo's cookies), one connection each: the router \
         puts each connection on a node, that node balances the session (round robin: each node \
         rotates on its own) and tells its peers"
    ));
    let sessions: Vec<String> = (1..=SESSIONS)
        .map(demo_cookie)
        .collect::<anyhow::Result<_>>()?;
    let mut first = BTreeMap::new();
    println!("  {:<34} {:<6} server", "cookie", "node");
    for session in &sessions {
        let (answer, node) = get_on(cluster, nodes, "/", Some(session))?;
        println!("  {session:<34} {node:<6} {}", answer.body);
        first.insert(session.clone(), answer.body);
    }

    step("every node's pinned table (`stickylb table`)");
    let table = identical_tables(nodes, n, &sessions)?;
    println!("  {n} tables, {} entries each, identical", table.len());

    step("each session asked for again on 3 new connections: other nodes, the same server");
    let mut landed = BTreeSet::new();
    let mut moved = 0usize;
    for session in &sessions {
        let mut via = Vec::new();
        for _ in 0..3 {
            let (answer, node) = get_on(cluster, nodes, "/", Some(session))?;
            landed.insert(node.clone());
            moved += usize::from(answer.body != first[session]);
            via.push(format!("{node}: {}", answer.body));
        }
        println!("  {}  {}", &session[..8], via.join(", "));
    }
    println!(
        "  connections landed on {} of {n} nodes; answers that differed from the first: {moved}",
        landed.len()
    );
    if moved > 0 {
        bail!("{moved} answers differed from the session's first server");
    }

    step("a session the server starts (Set-Cookie on a request without a cookie) is learned and mirrored");
    let (login, node) = get_on(cluster, nodes, "/login?setcookie=cluster-demo-login", None)?;
    println!(
        "  login landed on {node}, answered by {}, {}",
        login.body,
        login.set_cookie.as_deref().unwrap_or("no Set-Cookie")
    );
    let mut everything = sessions.clone();
    everything.push("cluster-demo-login".to_owned());
    identical_tables(nodes, n, &everything)?;
    for _ in 0..3 {
        let (again, node) = get_on(cluster, nodes, "/", Some("cluster-demo-login"))?;
        println!("  then on {node}: {}", again.body);
        if again.body != login.body {
            bail!(
                "the learned session moved from {} to {}",
                login.body,
                again.body
            );
        }
    }

    partition(cluster, nodes, &mut everything)?;
    consistent(cluster, nodes, &mut everything)?;
    println!("\n==> cluster: every check held");
    Ok(())
}

/// Cuts the last node off its peers while sessions are made on both sides, heals, and times
/// the agreement.
fn partition(cluster: &Cluster, nodes: &Nodes, everything: &mut Vec<String>) -> anyhow::Result<()> {
    let n = cluster.nodes.len();
    let cut = n - 1;
    let name = node_name(cut);
    step(&format!(
        "{name} is cut off from its peers (blackhole routes); the router still sends it its share \
         of connections while 20 more sessions are made"
    ));
    cluster.set_partitioned(cut, true)?;
    let during: Vec<String> = (100..120).map(demo_cookie).collect::<anyhow::Result<_>>()?;
    for session in &during {
        get(cluster, "/", Some(session))?;
    }
    println!("  waiting until the peers give the silent sessions up (5 s without a message)");
    wait(SYNC_LIMIT, "the dead-peer timeout", || {
        Ok(nodes.log(&name).contains("peer session closed"))
    })?;
    let (alone, others) = (nodes.table(cut)?, nodes.table(0)?);
    let only = |a: &BTreeMap<String, String>, b: &BTreeMap<String, String>| {
        during
            .iter()
            .filter(|s| a.contains_key(*s) && !b.contains_key(*s))
            .count()
    };
    println!(
        "  {name} has {} sessions the others lack; lb-1 has {} that {name} lacks",
        only(&alone, &others),
        only(&others, &alone)
    );
    step(&format!(
        "healed: time until all {n} tables are identical again"
    ));
    cluster.set_partitioned(cut, false)?;
    let healed = Instant::now();
    everything.extend(during);
    let table = identical_tables(nodes, n, everything)?;
    println!(
        "  identical after {:?} ({} entries each)",
        rounded(healed.elapsed()),
        table.len()
    );
    Ok(())
}

/// `balance = "consistent"` everywhere; the last node cut off again; new cookies asked
/// through the first node and through the cut-off one, which choose alike without a word.
fn consistent(
    cluster: &Cluster,
    nodes: &Nodes,
    everything: &mut Vec<String>,
) -> anyhow::Result<()> {
    let n = cluster.nodes.len();
    let cut = n - 1;
    let (first, last) = (node_name(0), node_name(cut));
    step("balance = \"consistent\" on every node (rendezvous hashing of the cookie), reloaded in place");
    nodes.set_balance(cluster, "consistent")?;
    step(&format!(
        "{last} cut off again; 10 new cookies asked through {first} and through {last} \
         themselves: they cannot tell each other, and choose alike"
    ));
    cluster.set_partitioned(cut, true)?;
    let cookies: Vec<String> = (200..210).map(demo_cookie).collect::<anyhow::Result<_>>()?;
    let mut differed = 0usize;
    println!("  {:<34} {first:<10} {last}", "cookie");
    for cookie in &cookies {
        let a = get_from(cluster.nodes[0].name(), cluster, "/", Some(cookie))?;
        let b = get_from(cluster.nodes[cut].name(), cluster, "/", Some(cookie))?;
        differed += usize::from(a.body != b.body);
        println!("  {cookie:<34} {:<10} {}", a.body, b.body);
    }
    cluster.set_partitioned(cut, false)?;
    if differed > 0 {
        bail!(
            "{differed} of {} cookies were balanced differently",
            cookies.len()
        );
    }
    println!("  healed; nothing to reconcile:");
    everything.extend(cookies);
    let table = identical_tables(nodes, n, everything)?;
    println!("  {n} tables, {} entries each, identical", table.len());
    Ok(())
}

fn step(what: &str) {
    println!("\n==> cluster: {what}");
}

/// Waits until every node's table holds `sessions` and all are equal; the table.
fn identical_tables(
    nodes: &Nodes,
    n: usize,
    sessions: &[String],
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut last = BTreeMap::new();
    wait(SYNC_LIMIT, "identical tables", || {
        let tables = (0..n)
            .map(|i| nodes.table(i))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let agreed = sessions.iter().all(|s| tables[0].contains_key(s))
            && tables.iter().all(|t| *t == tables[0]);
        last = tables.into_iter().next().unwrap_or_default();
        Ok(agreed)
    })?;
    Ok(last)
}

/// Whether every node logged a session with every other.
fn full_mesh(nodes: &Nodes, n: usize) -> bool {
    (0..n).all(|i| {
        let log = nodes.log(&node_name(i));
        (0..n)
            .filter(|&j| j != i)
            .all(|j| log.contains(&format!("peer session established peer={} ", node_name(j))))
    })
}

/// [`get`], and the node the connection landed on: the one whose access log has a line for
/// the client's port after the request (only what each log says from then on is read, as a
/// port is reused by later connections).
fn get_on(
    cluster: &Cluster,
    nodes: &Nodes,
    path: &str,
    session: Option<&str>,
) -> anyhow::Result<(Answer, String)> {
    let names: Vec<String> = (0..cluster.nodes.len()).map(node_name).collect();
    let marks: Vec<usize> = names.iter().map(|name| nodes.log(name).len()).collect();
    let answer = get(cluster, path, session)?;
    let needle = format!("client={}:{} ", cluster.addrs.client(), answer.port);
    let mut found = None;
    wait(Duration::from_secs(5), "the access line", || {
        found = names.iter().zip(&marks).find_map(|(name, &mark)| {
            let log = nodes.log(name);
            log.get(mark..)?.contains(&needle).then(|| name.clone())
        });
        Ok(found.is_some())
    })?;
    let node = found.ok_or_else(|| anyhow!("no node logged {needle}"))?;
    Ok((answer, node))
}

fn wait(
    limit: Duration,
    what: &str,
    mut done: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    while !done()? {
        if started.elapsed() > limit {
            bail!("{what}: not within {limit:?}");
        }
        thread::sleep(Duration::from_millis(25));
    }
    Ok(())
}

fn rounded(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The original demo's session cookie for session `n`: md5 of `_n` in hex.
fn demo_cookie(n: u32) -> anyhow::Result<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("printf _%s {n} | md5sum"))
        .output()
        .context("running md5sum")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.get(..32)
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("md5sum printed {text:?}"))
}

/// `GET path` from the client to the service address on a new connection, with the session
/// cookie if any.
fn get(cluster: &Cluster, path: &str, session: Option<&str>) -> anyhow::Result<Answer> {
    get_from(cluster.client.name(), cluster, path, session)
}

/// [`get`] from namespace `from` (a node's own: its request goes to itself, not through the
/// router).
fn get_from(
    from: &str,
    cluster: &Cluster,
    path: &str,
    session: Option<&str>,
) -> anyhow::Result<Answer> {
    let client = from.to_owned();
    let addr = SocketAddr::from((cluster.addrs.service(), 80));
    let cookie = session
        .map(|s| format!("Cookie: JSESSIONID={s}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: demo\r\n{cookie}Connection: close\r\n\r\n");
    thread::spawn(move || -> anyhow::Result<Answer> {
        netns_kit::enter(&client)?;
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let port = stream.local_addr()?.port();
        stream.write_all(request.as_bytes())?;
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes)?;
        let text = String::from_utf8_lossy(&bytes);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow!("no HTTP response from {addr}: {text:?}"))?;
        if !head.starts_with("HTTP/1.1 200") {
            bail!("{addr} answered {head}");
        }
        let set_cookie = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("set-cookie")
                .then(|| value.trim().to_owned())
        });
        Ok(Answer {
            port,
            body: body.trim().to_owned(),
            set_cookie,
        })
    })
    .join()
    .map_err(|_| anyhow!("the client thread panicked"))?
}
