//! What the data path would do with a packet, worked out from a plan (what
//! the maps hold) and the buckets, the way the XDP program works it out:
//! its class, its rule, each limit and tier with its bucket's state, and
//! the verdict it would get now.

use std::net::IpAddr;

use throttle_common::{
    admit, class_of, class_owner, flags, reason, Bucket, BucketKey, ClassConfig, Limit, Reason, Rule,
    ACTION_ALLOW, ACTION_DENY, BAN_MARK, PROTO_TCP, PROTO_UDP, TIER_SLOT, TIER_V4, TIER_V6, UNIT_BYTES,
};

use super::{masked_key as key, plan::Plan};

/// The facts of a packet the verdict depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub source: IpAddr,
    /// The IP protocol number (6 TCP, 17 UDP, any other).
    pub proto: u8,
    /// The destination port, when the packet has one to read.
    pub port: Option<u16>,
    /// A TCP SYN without ACK.
    pub syn: bool,
    /// The frame's length, for limits of bytes.
    pub len: u64,
}

/// One bucket the packet would be metered against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Which limit: `0`..`2` of its class, `tier:N`, or `rule`.
    pub limit: String,
    pub key: BucketKey,
    pub rule: Limit,
    /// The bucket, when the source is tracked.
    pub bucket: Option<Bucket>,
    /// Whole units it admits now.
    pub tokens: u64,
    /// Until it admits this packet, in ticks (0: it does now).
    pub wait: u64,
    /// Its verdict reason on its own.
    pub reason: Reason,
}

/// What the data path would do with a packet now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The class that meters it (0: the default), or none: in no class.
    pub class: Option<u32>,
    /// The rule of its source, if one matches.
    pub rule: Option<Rule>,
    /// The buckets it would meet, in order, up to the first that refuses.
    pub steps: Vec<Step>,
    pub reason: Reason,
    /// Until a packet like it would pass, in ticks, when it would not now.
    pub retry_after: Option<u64>,
}

/// The rule of `source`: the first set rule whose set holds it (`in_set`
/// answers for a slot), else the longest prefix of it in the plan's rules.
fn rule_of(plan: &Plan, source: IpAddr, in_set: &dyn Fn(u32, IpAddr) -> bool) -> Option<Rule> {
    let family = if source.is_ipv4() { flags::SETS_V4 } else { flags::SETS_V6 };
    if let Some(hit) =
        plan.set_rules.iter().find(|r| r.families & family != 0 && in_set(r.slot, source)).map(|r| r.rule)
    {
        return Some(hit);
    }
    match source {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            plan.rules_v4
                .iter()
                .filter(|((len, net), _)| {
                    let mask = if *len == 0 { 0 } else { u32::MAX << (32 - u32::from(*len)) };
                    bits & mask == u32::from_be_bytes(*net) & mask
                })
                .max_by_key(|((len, _), _)| *len)
                .map(|(_, rule)| *rule)
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            plan.rules_v6
                .iter()
                .filter(|((len, net), _)| {
                    let mask = if *len == 0 { 0 } else { u128::MAX << (128 - u32::from(*len)) };
                    bits & mask == u128::from_be_bytes(*net) & mask
                })
                .max_by_key(|((len, _), _)| *len)
                .map(|(_, rule)| *rule)
        }
    }
}

/// The class of the packet, as `rules::classify` finds it.
fn classify(plan: &Plan, probe: &Probe) -> Option<u32> {
    let f = plan.settings.flags;
    let unmatched = (f & flags::UNMATCHED_LIMIT != 0).then_some(0);
    if f & flags::CLAIMS == 0 {
        return unmatched;
    }
    let proto_flag = match probe.proto {
        PROTO_TCP => flags::CLAIMS_TCP,
        PROTO_UDP => flags::CLAIMS_UDP,
        _ => return unmatched,
    };
    let Some(port) = probe.port else {
        return if f & proto_flag != 0 { Some(0) } else { unmatched };
    };
    let Some(index) = class_of::index(probe.proto, port) else {
        return unmatched;
    };
    let entry = plan.class_of[index as usize];
    if entry & class_of::CLAIMED == 0 {
        return unmatched;
    }
    if entry & class_of::SYN_ONLY != 0 && !probe.syn {
        return None;
    }
    Some(entry & class_of::CLASS)
}

/// A class's ban: (`after`, `duration`) in ticks.
type BanTicks = Option<(u64, u64)>;

/// One bucket's state and verdict, as `bucket::charge` would judge it,
/// under a ban of (`after`, `for`) ticks if its class has one.
fn step(
    limit: String,
    key: BucketKey,
    rule: Limit,
    bucket: Option<Bucket>,
    (now, cost): (u64, u64),
    ban: BanTicks,
) -> Step {
    let cost = if rule.unit == UNIT_BYTES { cost } else { 1 };
    let tat = bucket.map_or(0, |b| b.tat);
    let banned_until = (tat & BAN_MARK != 0).then_some(tat & !BAN_MARK).filter(|&until| until > now);
    let tat = if tat & BAN_MARK != 0 { tat & !BAN_MARK } else { tat };
    let used = tat.saturating_sub(now);
    let tokens = rule.tolerance.saturating_sub(used) / rule.interval.max(1);
    let (reason, wait) = if let Some(until) = banned_until {
        (reason::BANNED, until - now)
    } else if admit(tat, now, cost, &rule).is_some() {
        (if bucket.is_some() { reason::PASSED } else { reason::NEW_SOURCE }, 0)
    } else {
        let over_since = bucket.map_or(0, |b| b.over_since);
        match ban {
            // Over its limit for the ban's `after` in a row: banned now.
            Some((after, duration)) if over_since != 0 && now.saturating_sub(over_since) >= after => {
                (reason::BANNED, duration)
            }
            _ => {
                let needed = tat.max(now) + cost * rule.interval - rule.tolerance;
                (reason::OVER_LIMIT, needed.saturating_sub(now))
            }
        }
    };
    Step { limit, key, rule, bucket, tokens, wait, reason }
}

/// What the data path would do with `probe` now (`now` in ticks), its
/// buckets read through `bucket`, whether a set slot holds an address
/// through `in_set`. The first-seen budget is taken as not spent.
pub fn explain(
    plan: &Plan,
    probe: &Probe,
    bucket: &dyn Fn(&BucketKey) -> Option<Bucket>,
    in_set: &dyn Fn(u32, IpAddr) -> bool,
    now: u64,
) -> Explanation {
    let rule = rule_of(plan, probe.source, in_set);
    let denied = rule.is_some_and(|r| r.action == ACTION_DENY);
    let Some(class_id) = classify(plan, probe) else {
        let reason = if denied { reason::DENY_RULE } else { reason::OUT_OF_SCOPE };
        return Explanation { class: None, rule, steps: Vec::new(), reason, retry_after: None };
    };
    let done = |reason, steps| Explanation { class: Some(class_id), rule, steps, reason, retry_after: None };
    match rule.map(|r| r.action) {
        Some(ACTION_ALLOW) => return done(reason::ALLOW_RULE, Vec::new()),
        Some(ACTION_DENY) => return done(reason::DENY_RULE, Vec::new()),
        _ => {}
    }
    let class: &ClassConfig = &plan.classes[class_id as usize];
    let ban = (class.ban_for != 0).then_some((class.ban_after, class.ban_for));
    let mut buckets: Vec<(String, BucketKey, Limit, BanTicks)> = Vec::new();
    if let Some(rule) = rule {
        let k = key(probe.source, rule.id, class.ipv4_mask, &class.ipv6_mask);
        buckets.push(("rule".to_owned(), k, rule.limit, None));
    } else {
        for slot in 0..class.limit_count.min(3) {
            let k = key(probe.source, class_owner(class_id, slot), class.ipv4_mask, &class.ipv6_mask);
            buckets.push((slot.to_string(), k, class.limits[slot as usize], ban));
        }
        let family = if probe.source.is_ipv4() { TIER_V4 } else { TIER_V6 };
        for index in 0..class.tier_count.min(2) {
            let tier = &class.tiers[index as usize];
            if tier.families & family != 0 {
                let k = key(
                    probe.source,
                    class_owner(class_id, TIER_SLOT + index),
                    tier.ipv4_mask,
                    &tier.ipv6_mask,
                );
                buckets.push((format!("tier:{index}"), k, tier.limit, None));
            }
        }
    }
    let mut steps = Vec::new();
    let mut verdict = reason::PASSED;
    for (i, (limit, k, metered, ban)) in buckets.into_iter().enumerate() {
        let s = step(limit, k, metered, bucket(&k), (now, probe.len), ban);
        let refused = reason::drops(s.reason);
        if i == 0 {
            verdict = s.reason;
        }
        let wait = s.wait;
        let reason = s.reason;
        steps.push(s);
        if refused {
            return Explanation { class: Some(class_id), rule, steps, reason, retry_after: Some(wait) };
        }
    }
    done(verdict, steps)
}
