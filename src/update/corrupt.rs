//! Faults in a transfer plan: what a buggy transfer would write. Each fault changes a copy of
//! the plan at a place picked from a number (the campaign's seed), reproducibly, and says
//! where it struck.

use serde::{Deserialize, Serialize};

use crate::transfer::{Place, Plan, Value};

/// A corruption of the state transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanFault {
    /// One bit of a transferred value flipped (not a pointer word).
    BitFlip,
    /// A pointer relocated to the wrong place (8 bytes off, or another object).
    BadPointer,
    /// A heap object's contents never written (it stays as `malloc` gave it).
    DropObject,
    /// A heap object transferred twice: one pointer to it leads to the copy instead.
    DuplicateObject,
    /// A field written at the wrong offset (its 8 bytes moved 4 bytes on), as a wrong type
    /// conversion would.
    ShiftField,
    /// The write of an object stops half-way.
    TruncateWrite,
    /// The target's `malloc` fails for one object.
    AllocFail,
}

impl PlanFault {
    /// Every fault, in a fixed order.
    pub const ALL: [PlanFault; 7] = [
        PlanFault::BitFlip,
        PlanFault::BadPointer,
        PlanFault::DropObject,
        PlanFault::DuplicateObject,
        PlanFault::ShiftField,
        PlanFault::TruncateWrite,
        PlanFault::AllocFail,
    ];

    /// Applies the fault to `plan` at a place chosen by `pick`. Returns where it struck, or
    /// `None` if the plan has no place for this fault (e.g. no pointer at all).
    pub fn apply(self, plan: &mut Plan, pick: u64) -> Option<String> {
        let n = plan.objects.len();
        if n == 0 {
            return None;
        }
        let heap: Vec<usize> = (0..n)
            .filter(|&i| matches!(plan.objects[i].place, Place::Heap(_)))
            .collect();
        let choose = |v: &[usize]| (!v.is_empty()).then(|| v[(pick % v.len() as u64) as usize]);
        match self {
            PlanFault::BitFlip => {
                // A byte outside every pointer word, in an object that has one.
                let candidates: Vec<usize> = (0..n)
                    .filter(|&i| value_bytes(plan, i).next().is_some())
                    .collect();
                let i = choose(&candidates)?;
                let bytes: Vec<u64> = value_bytes(plan, i).collect();
                let at = bytes[((pick >> 16) % bytes.len() as u64) as usize];
                let bit = (pick >> 40) % 8;
                plan.objects[i].bytes[at as usize] ^= 1 << bit;
                Some(format!("object {i}, byte {at}, bit {bit}"))
            }
            PlanFault::BadPointer => {
                let words: Vec<(usize, usize)> = (0..n)
                    .flat_map(|i| (0..plan.objects[i].pointers.len()).map(move |k| (i, k)))
                    .collect();
                if words.is_empty() {
                    return None;
                }
                let (i, k) = words[(pick % words.len() as u64) as usize];
                let (off, value) = &mut plan.objects[i].pointers[k];
                let what = match value {
                    Value::Object { index, offset } if (pick >> 20).is_multiple_of(2) && n > 1 => {
                        let other = (*index + 1 + ((pick >> 24) as usize % (n - 1))) % n;
                        let was = *index;
                        *index = other;
                        *offset = 0;
                        format!("now to object {other} instead of {was}")
                    }
                    Value::Object { offset, .. } => {
                        *offset += 8;
                        "8 bytes off".to_owned()
                    }
                    Value::Address(a) => {
                        *a = tracer::RemoteAddr::new(a.get().wrapping_add(8));
                        "8 bytes off".to_owned()
                    }
                };
                Some(format!("object {i}, pointer at byte {off}: {what}"))
            }
            PlanFault::DropObject => {
                let i = choose(&heap)?;
                let o = &mut plan.objects[i];
                o.bytes.iter_mut().for_each(|b| *b = 0);
                o.pointers.clear();
                Some(format!(
                    "heap object {i} ({} bytes) left unwritten",
                    o.bytes.len()
                ))
            }
            PlanFault::DuplicateObject => {
                // A heap object something points to, and one such pointer.
                let mut incoming: Vec<(usize, usize, usize)> = Vec::new();
                for (i, o) in plan.objects.iter().enumerate() {
                    for (k, (_, v)) in o.pointers.iter().enumerate() {
                        if let Value::Object { index, .. } = v {
                            if matches!(plan.objects[*index].place, Place::Heap(_)) {
                                incoming.push((i, k, *index));
                            }
                        }
                    }
                }
                if incoming.is_empty() {
                    return None;
                }
                let (i, k, target) = incoming[(pick % incoming.len() as u64) as usize];
                let copy = plan.objects[target].clone();
                plan.objects.push(copy);
                let m = plan.objects.len() - 1;
                if let (_, Value::Object { index, .. }) = &mut plan.objects[i].pointers[k] {
                    *index = m;
                }
                Some(format!(
                    "heap object {target} written twice; object {i}'s pointer {k} leads to the copy"
                ))
            }
            PlanFault::ShiftField => {
                let candidates: Vec<usize> = (0..n)
                    .filter(|&i| plan.objects[i].bytes.len() >= 16)
                    .collect();
                let i = choose(&candidates)?;
                let o = &mut plan.objects[i];
                let fields = (o.bytes.len() - 12) / 8 + 1;
                let at = 8 * ((pick >> 16) as usize % fields);
                o.bytes.copy_within(at..at + 8, at + 4);
                Some(format!("object {i}, 8 bytes at {at} written at {}", at + 4))
            }
            PlanFault::TruncateWrite => {
                let candidates: Vec<usize> = (0..n)
                    .filter(|&i| plan.objects[i].bytes.len() >= 2)
                    .collect();
                let i = choose(&candidates)?;
                let o = &mut plan.objects[i];
                let half = o.bytes.len() / 2;
                o.bytes[half..].iter_mut().for_each(|b| *b = 0);
                o.pointers.retain(|(off, _)| (*off as usize) + 8 <= half);
                Some(format!(
                    "object {i}: only {half} of {} bytes written",
                    o.bytes.len()
                ))
            }
            PlanFault::AllocFail => {
                let i = choose(&heap)?;
                // No malloc gives this much: it returns NULL, as when the target is out of
                // memory.
                plan.objects[i].place = Place::Heap(1 << 62);
                Some(format!("malloc for heap object {i} fails"))
            }
        }
    }
}

/// Offsets of the bytes of planned object `i` that no pointer word covers.
fn value_bytes(plan: &Plan, i: usize) -> impl Iterator<Item = u64> + '_ {
    let o = &plan.objects[i];
    (0..o.bytes.len() as u64).filter(move |b| {
        !o.pointers
            .iter()
            .any(|(off, _)| (*off..*off + 8).contains(b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::PlannedObject;

    fn plan() -> Plan {
        Plan {
            objects: vec![
                PlannedObject {
                    source: None,
                    place: Place::Global(tracer::RemoteAddr::new(0x1000)),
                    bytes: (1..=16).collect(),
                    pointers: vec![(
                        0,
                        Value::Object {
                            index: 1,
                            offset: 0,
                        },
                    )],
                },
                PlannedObject {
                    source: None,
                    place: Place::Heap(24),
                    bytes: (100..124).collect(),
                    pointers: vec![],
                },
            ],
            displaced: vec![],
        }
    }

    #[test]
    fn every_fault_changes_the_plan_reproducibly() {
        for fault in PlanFault::ALL {
            for pick in [0u64, 1, 0xdead_beef_1234_5678] {
                let (mut a, mut b) = (plan(), plan());
                let wa = fault.apply(&mut a, pick).expect("a place for every fault");
                let wb = fault.apply(&mut b, pick).unwrap();
                assert_eq!(wa, wb);
                assert_eq!(format!("{a:?}"), format!("{b:?}"), "{fault:?}");
                assert_ne!(
                    format!("{a:?}"),
                    format!("{:?}", plan()),
                    "{fault:?} {pick}"
                );
            }
        }
    }

    #[test]
    fn a_bit_flip_never_touches_a_pointer_word() {
        for pick in 0..200u64 {
            let mut p = plan();
            PlanFault::BitFlip.apply(&mut p, pick.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            assert_eq!(p.objects[0].bytes[..8], [1, 2, 3, 4, 5, 6, 7, 8]);
        }
    }
}
