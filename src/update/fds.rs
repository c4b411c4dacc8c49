//! The kernel state the transferred data names: every descriptor of the old process, at the
//! same number in the future; epoll instances rebuilt fresh there, their registrations'
//! data relocated where the program stored a pointer.
//!
//! Nothing here changes a kernel object the old process uses: descriptors are duplicated
//! (`pidfd_getfd`, then passed over a Unix socket), and an epoll instance is never shared but
//! re-created, so an aborted update leaves the old process's registrations as they were.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd, RawFd};

use anyhow::Context;
use tracer::fd::{list_fds, take_fd, EpollRegistration};
use tracer::fdpass::{rebuild_epoll, FdChannel, FdToInstall};
use tracer::Pid;

use super::spawned::Spawned;
use crate::state::live::LiveCapture;
use crate::state::ObjectId;
use crate::transfer::{Applied, Plan};

/// One descriptor of the old process, duplicated into ours.
pub struct OldFd {
    /// Its number there.
    pub fd: RawFd,
    /// The same open file, ours.
    pub file: OwnedFd,
    /// Whether it is close-on-exec there.
    pub cloexec: bool,
    /// For an epoll instance, its registrations.
    pub epoll: Option<Vec<EpollRegistration>>,
}

/// Every descriptor of stopped process `pid`.
pub fn take_all(pid: Pid) -> tracer::Result<Vec<OldFd>> {
    let mut out = Vec::new();
    for info in list_fds(pid)? {
        let file = take_fd(pid, info.fd)?;
        out.push(OldFd {
            fd: info.fd,
            cloexec: info.cloexec(),
            epoll: info.is_epoll().then(|| info.epoll.clone()),
            file,
        });
    }
    Ok(out)
}

/// What [`install`] did.
pub struct Kernel {
    /// Descriptors installed.
    pub fds: u64,
    /// Epoll instances rebuilt.
    pub epolls: u64,
}

/// Puts every descriptor of the old process into the held future at the same number (the
/// future's own start-up descriptors there are moved away and closed), then rebuilds each
/// epoll instance with its registrations, relocating data words that point into transferred
/// objects.
pub fn install(
    future: &mut Spawned,
    channel: &FdChannel,
    fds: &[OldFd],
    old: &LiveCapture,
    plan: &Plan,
    applied: &Applied,
) -> anyhow::Result<Kernel> {
    let tid = future.held.tid();
    let channel_fd = future
        .channel_fd
        .context("the future has no descriptor channel")?;
    let plain: Vec<FdToInstall<'_>> = fds
        .iter()
        .filter(|f| f.epoll.is_none())
        .map(|f| FdToInstall {
            file: f.file.as_fd(),
            target: f.fd,
            cloexec: f.cloexec,
        })
        .collect();
    // Only an epoll instance's data words need relocating; the index costs ~0.4 s at 1e6
    // objects, so it is built only then.
    let relocator = fds
        .iter()
        .any(|f| f.epoll.is_some())
        .then(|| Relocator::new(old, plan, applied));
    let mut s = tracer::remote::RemoteSession::open(&mut future.tracee, tid)?;
    let installed = channel.install_fds(&mut s, channel_fd, &plain)?;
    // The future's own start-up descriptors that sat where the old ones go: the transferred
    // state names the old ones now, so nothing refers to these.
    for moved_to in installed.moved.values() {
        s.close_fd(*moved_to)?;
    }
    future.channel_fd = Some(installed.channel);
    let mut epolls = 0;
    for f in fds {
        let Some(regs) = &f.epoll else { continue };
        let relocator = relocator.as_ref().expect("built when there is an epoll");
        let relocate = |data: u64| relocator.relocate(data);
        let mut relocated = Vec::with_capacity(regs.len());
        for r in regs {
            let data = relocate(r.data).with_context(|| {
                format!(
                    "epoll descriptor {}: registration of descriptor {}",
                    f.fd, r.tfd
                )
            })?;
            relocated.push(EpollRegistration { data, ..*r });
        }
        let rebuilt = rebuild_epoll(&mut s, &relocated, &|d| d, f.cloexec, Some(f.fd))
            .with_context(|| format!("rebuilding epoll descriptor {}", f.fd))?;
        if let Some((_, moved_to)) = rebuilt.moved {
            s.close_fd(moved_to)?;
        }
        epolls += 1;
    }
    s.close()?;
    Ok(Kernel {
        fds: fds.len() as u64,
        epolls,
    })
}

/// Old addresses to new ones, through the forward plan.
struct Relocator<'a> {
    /// Old objects by address: (start, size, id).
    ranges: Vec<(u64, u64, ObjectId)>,
    /// Source object -> plan index.
    planned: HashMap<ObjectId, usize>,
    plan: &'a Plan,
    applied: &'a Applied,
    old: &'a LiveCapture,
}

impl<'a> Relocator<'a> {
    fn new(old: &'a LiveCapture, plan: &'a Plan, applied: &'a Applied) -> Self {
        let mut ranges: Vec<(u64, u64, ObjectId)> = old
            .graph
            .objects
            .iter()
            .map(|o| (o.addr.get(), o.size.max(1), o.id))
            .collect();
        ranges.sort_unstable();
        let planned = plan
            .objects
            .iter()
            .enumerate()
            .filter_map(|(i, o)| o.source.map(|s| (s, i)))
            .collect();
        Relocator {
            ranges,
            planned,
            plan,
            applied,
            old,
        }
    }

    /// The new value of a data word: itself unless it points into a transferred object.
    fn relocate(&self, data: u64) -> anyhow::Result<u64> {
        let i = self.ranges.partition_point(|(start, _, _)| *start <= data);
        let Some(&(start, size, id)) = i.checked_sub(1).map(|i| &self.ranges[i]) else {
            return Ok(data);
        };
        if data >= start + size {
            return Ok(data);
        }
        let offset = data - start;
        let object = self.old.graph.object(id);
        let Some(&index) = self.planned.get(&id) else {
            anyhow::bail!(
                "its data {data:#x} points into an object of the old state ({} bytes at {:#x}) \
                 that the transfer does not carry",
                object.size,
                start
            );
        };
        let new_len = self.plan.objects[index].bytes.len() as u64;
        if offset != 0 && new_len != object.size {
            anyhow::bail!(
                "its data {data:#x} points {offset} bytes into an object ({} bytes at {start:#x}) \
                 whose layout changes ({} bytes in the new version): cannot relocate an \
                 interior pointer there",
                object.size,
                new_len
            );
        }
        Ok(self.applied.addresses[index].get() + offset)
    }
}
