//! The status page's "Peers" section: one row per member of the peers section.

use std::fmt::{self, Write as _};

use super::{Html, Num};
use crate::{monitor::view::PeerView, peers::stats::PeerState};

pub(super) fn write_peers(out: &mut String, peers: &[PeerView]) -> fmt::Result {
    out.push_str("<section class=\"plain\" id=\"peers\"><h2>Peers</h2>");
    if peers.is_empty() {
        out.push_str(
            "<p class=\"empty\">No peers configured: this instance does not share its stick table.</p></section>\n",
        );
        return Ok(());
    }
    out.push_str(
        "<div class=\"scroll\"><table><thead><tr class=\"groups\"><th colspan=\"5\">Peer</th>\
         <th colspan=\"3\">Updates</th><th colspan=\"2\">Resyncs</th><th colspan=\"4\">Problems</th></tr>\
         <tr><th class=\"l\">Name</th><th class=\"l\">Address</th><th>State</th><th>Last heard</th><th>Sessions</th>\
         <th class=\"g\">Sent</th><th>Received</th><th>Acked</th>\
         <th class=\"g\">Taught</th><th>Learned</th>\
         <th class=\"g\" title=\"Received entries naming a server this node does not have\">Unknown servers</th>\
         <th title=\"Received entries that disagreed with a recent local choice\">Conflicts</th>\
         <th title=\"Local entries not sent: key longer than the peer table's key length\">Keys too long</th>\
         <th class=\"l\">Last error</th></tr></thead><tbody>",
    );
    for peer in peers {
        write_peer(out, peer)?;
    }
    out.push_str("</tbody></table></div></section>\n");
    Ok(())
}

fn write_peer(out: &mut String, p: &PeerView) -> fmt::Result {
    // Row classes shared with the server rows, so the badges look alike.
    let row = match p.state {
        PeerState::Established => "up",
        PeerState::Connecting => "connecting",
        PeerState::Down => "down",
    };
    write!(
        out,
        "<tr class=\"{row}\"><td class=\"l\"><b>{}</b></td><td class=\"l\">{}</td><td class=\"state\">{}</td><td>",
        Html(&p.name),
        p.addr,
        p.state.as_str(),
    )?;
    match p.last_heard_ms_ago {
        Some(ms) => write!(out, "{}", Ago(ms))?,
        None => out.push_str("<span class=\"muted\">never</span>"),
    }
    write!(
        out,
        "</td><td>{}</td><td class=\"g\">{}</td><td>{}</td><td>{}</td><td class=\"g\">{}</td><td>{}</td>\
         <td class=\"g\">{}</td><td>{}</td><td>{}</td>",
        Num(p.sessions),
        Num(p.updates_sent),
        Num(p.updates_received),
        Num(p.updates_acked),
        Num(p.resyncs_taught),
        Num(p.resyncs_learned),
        Num(p.unknown_servers),
        Num(p.conflicts),
        Num(p.keys_too_long),
    )?;
    match &p.last_error {
        Some(error) => write!(
            out,
            "<td class=\"check\" title=\"{}\"><div>{}</div></td></tr>",
            Html(error),
            Html(error)
        ),
        None => {
            out.push_str("<td class=\"l muted\">-</td></tr>");
            Ok(())
        }
    }
}

/// Time since an event, coarser as it grows: `1.2 s ago`, `4m05s ago`, `3h04m ago`,
/// `2d 03h ago`.
struct Ago(u64);

impl fmt::Display for Ago {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tenths = self.0 / 100;
        let seconds = self.0 / 1000;
        match seconds {
            0..60 => write!(f, "{}.{} s ago", tenths / 10, tenths % 10),
            60..3600 => write!(f, "{}m{:02}s ago", seconds / 60, seconds % 60),
            3600..86_400 => write!(f, "{}h{:02}m ago", seconds / 3600, seconds / 60 % 60),
            _ => write!(f, "{}d {:02}h ago", seconds / 86_400, seconds / 3600 % 24),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Ago;

    #[test]
    fn ago_coarsens_with_age() {
        assert_eq!(Ago(0).to_string(), "0.0 s ago");
        assert_eq!(Ago(1_234).to_string(), "1.2 s ago");
        assert_eq!(Ago(59_999).to_string(), "59.9 s ago");
        assert_eq!(Ago(245_000).to_string(), "4m05s ago");
        assert_eq!(Ago(11_040_000).to_string(), "3h04m ago");
        assert_eq!(Ago(183_600_000).to_string(), "2d 03h ago");
    }
}
