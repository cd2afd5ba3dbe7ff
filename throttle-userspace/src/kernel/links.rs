//! Attaching the program to interfaces, taking over the links an earlier
//! daemon pinned, and letting go of them.

use aya::programs::{
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
    ProgramError, XdpMode as AyaXdpMode,
};
use throttle_common::map_name;

use super::{
    error::KernelError,
    maps::Dataplane,
    pins::{create_dir_if_missing, link_pin_name, remove_pin, unpin_link, LinkPin, GENERIC, NATIVE},
    sys::{self, if_index},
    Attachment, Presence, XdpMode,
};

impl Dataplane {
    /// Attaches to `iface`. In auto mode, native first and generic when the
    /// driver refuses; the mode obtained is returned and kept.
    ///
    /// With a pin directory, a link pinned there for `iface` is taken over:
    /// its program is replaced by this one in place, and it keeps the mode
    /// it was created with, whatever `mode` asks. Otherwise a new link is
    /// attached and pinned.
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<&Attachment, KernelError> {
        if self.attachments.iter().any(|a| a.iface == iface) {
            return Err(KernelError::AlreadyAttached { iface: iface.to_owned() });
        }
        // Its counters are told apart from its first packet on: a slot of
        // its own, and the configuration no longer naming one interface only.
        if let Some(ifindex) = if_index(iface) {
            self.give_slot(iface, ifindex)?;
        }
        if !self.attachments.is_empty() {
            self.rewrite_config(true)?;
        }
        let attached = match self.attach_inner(iface, mode) {
            Ok(attached) => attached.clone(),
            Err(err) => {
                self.rewrite_config(false)?;
                return Err(err);
            }
        };
        self.rewrite_config(false)?;
        Ok(self.attachments.iter().find(|a| **a == attached).expect("just attached"))
    }

    fn attach_inner(&mut self, iface: &str, mode: XdpMode) -> Result<&Attachment, KernelError> {
        if let Some(pins) = &self.pins {
            let mut found: Vec<LinkPin> = pins.links()?.into_iter().filter(|l| l.iface == iface).collect();
            if found.len() > 1 {
                return Err(KernelError::DuplicateLinks {
                    iface: iface.to_owned(),
                    paths: found.into_iter().map(|l| l.path).collect(),
                });
            }
            if let Some(pin) = found.pop() {
                if self.adopt_link(&pin, mode)? {
                    return Ok(self.attachments.last().expect("just pushed"));
                }
            }
        }
        let attempts: &[(AyaXdpMode, &'static str)] = match mode {
            XdpMode::Auto => &[(AyaXdpMode::Driver, NATIVE), (AyaXdpMode::Skb, GENERIC)],
            XdpMode::Native => &[(AyaXdpMode::Driver, NATIVE)],
            XdpMode::Generic => &[(AyaXdpMode::Skb, GENERIC)],
        };
        let mut last = None;
        for &(aya_mode, name) in attempts {
            match self.program_mut().attach(iface, aya_mode) {
                Ok(link_id) => {
                    if let Some(pins) = &self.pins {
                        let (links, dir) = (pins.links_dir(), pins.mode_dir(name));
                        let link = self.program_mut().take_link(link_id)?;
                        // An XDP attachment is a bpf_link unless aya fell back
                        // to netlink, which only kernels before 5.9 (no XDP
                        // links) make it do; those are below what this
                        // program needs anyway.
                        let link = FdLink::try_from(link)
                            .map_err(|source| KernelError::Unpinnable { iface: iface.to_owned(), source })?;
                        create_dir_if_missing(&links)?;
                        create_dir_if_missing(&dir)?;
                        let path = dir.join(link_pin_name(iface));
                        let pinned = link
                            .pin(&path)
                            .map_err(|source| KernelError::Pin { path: path.clone(), source })?;
                        self.links.push((iface.to_owned(), pinned.into()));
                    }
                    if let Some(ifindex) = if_index(iface) {
                        self.ifindexes.insert(iface.to_owned(), ifindex);
                    }
                    self.attachments.push(Attachment { iface: iface.to_owned(), mode: name, adopted: false });
                    return Ok(self.attachments.last().expect("just pushed"));
                }
                Err(source @ ProgramError::UnknownInterface { .. }) => {
                    return Err(KernelError::Attach { iface: iface.to_owned(), mode: name, source });
                }
                Err(source) => {
                    if last.is_some() || attempts.len() == 1 {
                        return Err(KernelError::Attach { iface: iface.to_owned(), mode: name, source });
                    }
                    tracing::info!(iface, "native XDP refused ({source}); trying generic");
                    last = Some(source);
                }
            }
        }
        unreachable!("every attempt returns")
    }

    /// Takes over the link pinned at `pin`: replaces its program with this
    /// one. False when the link is defunct (its interface was deleted): the
    /// pin is removed and the caller attaches anew.
    fn adopt_link(&mut self, pin: &LinkPin, mode: XdpMode) -> Result<bool, KernelError> {
        let ifindex = if_index(&pin.iface).ok_or_else(|| KernelError::Attach {
            iface: pin.iface.clone(),
            mode: pin.mode,
            source: ProgramError::UnknownInterface { name: pin.iface.clone() },
        })?;
        let pinned_ifindex = sys::xdp_link_ifindex(&pin.path)
            .map_err(|source| KernelError::PinnedLinkInfo { path: pin.path.clone(), source })?
            .ok_or_else(|| KernelError::NotXdpLink { path: pin.path.clone() })?;
        if pinned_ifindex == 0 {
            // The kernel detaches an XDP link whose device goes away and
            // reports interface index 0 for it from then on: an interface
            // of that name was deleted and made again since.
            tracing::warn!(iface = pin.iface, path = %pin.path.display(), "the pinned link is defunct; attaching anew");
            unpin_link(&pin.path)?;
            return Ok(false);
        }
        if pinned_ifindex != ifindex {
            return Err(KernelError::LinkElsewhere {
                iface: pin.iface.clone(),
                path: pin.path.clone(),
                pinned_ifindex,
                ifindex,
            });
        }
        let wanted = match mode {
            XdpMode::Auto => None,
            XdpMode::Native => Some(NATIVE),
            XdpMode::Generic => Some(GENERIC),
        };
        if wanted.is_some_and(|wanted| wanted != pin.mode) {
            // Changing the mode would mean detaching first: a gap. The
            // running mode stays until a clean stop.
            tracing::warn!(
                iface = pin.iface,
                pinned = pin.mode,
                requested = %mode,
                "the pinned link runs in {} mode and keeps it; stop the daemon (without --keep-on-exit) \
                 and start again to change it",
                pin.mode
            );
        }
        let link_err = |source| KernelError::PinnedLink { path: pin.path.clone(), source };
        let link = FdLink::from(PinnedLink::from_pin(&pin.path).map_err(link_err)?);
        let link = XdpLink::try_from(link).map_err(link_err)?;
        let link_id = self
            .program_mut()
            .attach_to_link(link)
            .map_err(|source| KernelError::Replace { path: pin.path.clone(), source })?;
        // Held apart from the program, like the links this process pins,
        // so that dropping the program never detaches it.
        let link = FdLink::try_from(self.program_mut().take_link(link_id)?).map_err(link_err)?;
        self.links.push((pin.iface.clone(), link));
        self.ifindexes.insert(pin.iface.clone(), ifindex);
        self.attachments.push(Attachment { iface: pin.iface.clone(), mode: pin.mode, adopted: true });
        Ok(true)
    }

    /// Detaches and unpins the links pinned for interfaces not in `keep`
    /// (those an earlier daemon attached to and this one no longer names),
    /// and returns the names of those interfaces. Without a pin directory
    /// there are none.
    pub fn release_others(&mut self, keep: &[String]) -> Result<Vec<String>, KernelError> {
        let Some(pins) = &self.pins else {
            return Ok(Vec::new());
        };
        let mut released = Vec::new();
        for pin in pins.links()? {
            if keep.contains(&pin.iface) {
                continue;
            }
            unpin_link(&pin.path)?;
            self.links.retain(|(iface, _)| *iface != pin.iface);
            self.attachments.retain(|a| a.iface != pin.iface);
            self.ifindexes.remove(&pin.iface);
            if let Some(ifindex) = if_index(&pin.iface) {
                self.take_slot(ifindex)?;
            }
            released.push(pin.iface);
        }
        self.rewrite_config(false)?;
        Ok(released)
    }

    /// Undoes a start that failed: detaches the links this process
    /// attached (not those it took over) and removes their pins, and when
    /// the maps were made by this process, removes their pins and the pin
    /// directories too, so that the kernel frees them. What an earlier
    /// daemon pinned stays pinned: its maps (with the policy this process
    /// wrote) and its links (running this process's program on them).
    /// Afterwards the dataplane holds no pins, as after [`Dataplane::release`].
    pub fn abandon(&mut self) -> Result<(), KernelError> {
        let Some(pins) = self.pins.take() else {
            return Ok(());
        };
        let mut steps = Steps::default();
        let mut record = |step| steps.record(step);
        let made: Vec<Attachment> = self.attachments.iter().filter(|a| !a.adopted).cloned().collect();
        for attachment in made {
            record(unpin_link(&pins.mode_dir(attachment.mode).join(link_pin_name(&attachment.iface))));
            self.links.retain(|(iface, _)| *iface != attachment.iface);
            self.attachments.retain(|a| a.iface != attachment.iface);
            if let Some(ifindex) = self.ifindexes.remove(&attachment.iface) {
                if self.adopted() {
                    record(self.take_slot(ifindex));
                }
            }
        }
        if !self.adopted() {
            let maps = pins.maps();
            for name in map_name::pinned() {
                record(remove_pin(&maps.join(name)));
            }
            // The link directories stay when an earlier daemon left links
            // there (without maps); the rest goes.
            let _ = pins.remove_dirs();
        }
        steps.result()
    }

    /// How each attachment stands with its interface now: still there, gone
    /// (deleted, or moved to another namespace), or back under the same
    /// name as a new interface that nothing is attached to.
    #[must_use]
    pub fn presence(&self) -> Vec<(String, Presence)> {
        self.attachments
            .iter()
            .map(|a| {
                let presence = match if_index(&a.iface) {
                    None => Presence::Missing,
                    Some(now) if self.ifindexes.get(&a.iface) != Some(&now) => Presence::Returned,
                    Some(_) => {
                        // The kernel detaches an XDP link whose device goes
                        // away and reports index 0 for it from then on.
                        let pin =
                            self.pins.as_ref().map(|p| p.mode_dir(a.mode).join(link_pin_name(&a.iface)));
                        match pin.map(|pin| sys::xdp_link_ifindex(&pin)) {
                            Some(Ok(Some(0))) => Presence::Returned,
                            _ => Presence::Attached,
                        }
                    }
                };
                (a.iface.clone(), presence)
            })
            .collect()
    }

    /// Attaches again to `iface`, an interface made again under the name of
    /// one attached to (see [`Dataplane::presence`]), in the mode the
    /// attachment had. The defunct link and its pin go; the interface's
    /// counters slot follows it to its new index, so its counters carry on.
    pub fn reattach(&mut self, iface: &str) -> Result<&Attachment, KernelError> {
        let at = self
            .attachments
            .iter()
            .position(|a| a.iface == iface)
            .ok_or_else(|| KernelError::NotAttached { iface: iface.to_owned() })?;
        let old = self.attachments.remove(at);
        if let Err(err) = self.reattach_inner(iface, old.mode) {
            // Still configured: the next check tries again.
            self.attachments.insert(at, old);
            return Err(err);
        }
        self.rewrite_config(false)?;
        Ok(self.attachments.last().expect("just attached"))
    }

    fn reattach_inner(&mut self, iface: &str, mode: &'static str) -> Result<(), KernelError> {
        self.links.retain(|(name, _)| name != iface);
        if let Some(pins) = &self.pins {
            unpin_link(&pins.mode_dir(mode).join(link_pin_name(iface)))?;
        }
        let ifindex = if_index(iface);
        if let (Some(was), Some(now)) = (self.ifindexes.remove(iface), ifindex) {
            if let Some(slot) = self.slots.get(&was).copied() {
                self.take_slot(was)?;
                if now < throttle_common::MAX_IFINDEX {
                    self.iface_slot.set(now, slot, 0).map_err(super::error::map_err(map_name::IFACE_SLOT))?;
                    self.slots.insert(now, slot);
                }
            }
        }
        if let Some(now) = ifindex {
            self.give_slot(iface, now)?;
        }
        let mode = if mode == NATIVE { XdpMode::Native } else { XdpMode::Generic };
        self.attach_inner(iface, mode).map(drop)
    }

    /// Stops the data path. With `keep_pins`, everything stays attached and
    /// pinned, for the next daemon to adopt (an upgrade). Without, every
    /// link pinned in the pin directory is detached, and every pin and the
    /// directories are removed. Without a pin directory, the program is
    /// detached either way.
    pub fn shutdown(mut self, keep_pins: bool) -> Result<(), KernelError> {
        self.release(keep_pins)
    }

    /// What [`Dataplane::shutdown`] does, for an owner that cannot give the
    /// dataplane up: afterwards it holds no pins, and its links go with it.
    pub fn release(&mut self, keep_pins: bool) -> Result<(), KernelError> {
        let Some(pins) = self.pins.take() else {
            return Ok(());
        };
        if keep_pins {
            return Ok(());
        }
        // Every step is tried, so that one failure leaves as little behind
        // as possible; the first error is reported.
        let mut steps = Steps::default();
        let mut record = |step| steps.record(step);
        match pins.links() {
            Ok(links) => {
                for pin in links {
                    record(unpin_link(&pin.path));
                }
            }
            Err(err) => record(Err(err)),
        }
        // The links this process holds whose pin is gone already.
        self.links.clear();
        let maps = pins.maps();
        for name in map_name::pinned() {
            record(remove_pin(&maps.join(name)));
        }
        record(pins.remove_dirs());
        steps.result()
    }

    /// Where the program is attached.
    #[must_use]
    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }
}

/// The steps of a teardown: each is tried, so that one failure leaves as
/// little behind as possible; each failure is logged and the first one
/// reported.
#[derive(Default)]
struct Steps {
    first: Option<KernelError>,
}

impl Steps {
    fn record(&mut self, step: Result<(), KernelError>) {
        if let Err(err) = step {
            tracing::warn!("{err}");
            self.first.get_or_insert(err);
        }
    }

    fn result(self) -> Result<(), KernelError> {
        self.first.map_or(Ok(()), Err)
    }
}
