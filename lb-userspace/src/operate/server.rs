//! `server BACKEND/SERVER ready|drain|maint|weight N`: the admin state and weight of a server,
//! kept across reloads, upgrades and restarts (see [`crate::backend::admin`]).

use crate::{
    backend::{Admin, BackendState},
    control::command::ServerAction,
};

pub(super) fn apply(
    backend: &BackendState,
    server: &str,
    action: ServerAction,
) -> Result<String, String> {
    let target = format!("{}/{server}", backend.name);
    match action {
        ServerAction::Ready => set_admin(backend, server, Admin::Ready, &target),
        ServerAction::Drain => set_admin(backend, server, Admin::Drain, &target),
        ServerAction::Maint => set_admin(backend, server, Admin::Maint, &target),
        ServerAction::Weight(weight) => {
            let before = backend.set_weight(server, weight)?;
            Ok(format!("{target} weight {before} -> {weight}"))
        }
    }
}

fn set_admin(
    backend: &BackendState,
    server: &str,
    admin: Admin,
    target: &str,
) -> Result<String, String> {
    let before = backend.set_admin(server, admin)?;
    let what = match admin {
        Admin::Ready => "takes new sessions",
        Admin::Drain => "keeps its sessions, takes no new ones",
        Admin::Maint => "takes no traffic; its sessions go elsewhere on their next request",
    };
    Ok(format!(
        "{target} {} -> {} ({what})",
        before.as_str(),
        admin.as_str()
    ))
}
