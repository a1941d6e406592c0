//! The part-size schedule of multipart uploads: which bytes part n of a file holds.
//! Part n (from 1) is `base × 2^⌊(n−1)/G⌋` bytes, at most 5 GiB; G, the parts per
//! doubling, is the largest count with which `max_parts` parts still reach the largest
//! object S3 takes (5 TiB, or less if the service takes fewer parts than that allows).
//! Invariants: the schedule depends only on `(base, max_parts)`, never on a file's size,
//! so a file streamed front to back and one whose size is first known at close are cut
//! the same way and a part started while writing is never sent again; every part but
//! the last is at least 5 MiB and none is over 5 GiB; no file of up to
//! [`PartSchedule::max_object`] bytes needs more than `max_parts` parts.

/// S3's smallest part (all but the last).
pub const MIN_PART: u64 = 5 << 20;
/// S3's largest part, and its largest single PUT.
pub const MAX_PART: u64 = 5 << 30;
/// S3's largest number of parts of one upload.
pub const MAX_PARTS: u32 = 10_000;
/// S3's largest object.
pub const MAX_OBJECT: u64 = 5 << 40;

/// One part of a file: its number and the bytes `[offset, offset + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    pub number: u32,
    pub offset: u64,
    pub len: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartSchedule {
    base: u64,
    max_parts: u32,
    per_doubling: u32,
    max_object: u64,
}

impl PartSchedule {
    /// The schedule for parts of `base` bytes at first (clamped to 5 MiB..=5 GiB) and at
    /// most `max_parts` parts (clamped to 1..=10,000).
    pub fn new(base: u64, max_parts: u32) -> PartSchedule {
        let base = base.clamp(MIN_PART, MAX_PART);
        let max_parts = max_parts.clamp(1, MAX_PARTS);
        let target = MAX_OBJECT.min(reach(base, max_parts, 1));
        // reach() never grows with the parts per doubling: search the largest that
        // still reaches the target (1 always does).
        let (mut low, mut high) = (1, max_parts);
        while low < high {
            let mid = low + (high - low).div_ceil(2);
            if reach(base, max_parts, mid) >= target {
                low = mid;
            } else {
                high = mid - 1;
            }
        }
        PartSchedule {
            base,
            max_parts,
            per_doubling: low,
            max_object: target,
        }
    }

    /// The size of every part of a small file.
    pub fn base(&self) -> u64 {
        self.base
    }

    pub fn max_parts(&self) -> u32 {
        self.max_parts
    }

    /// After how many parts the part size doubles.
    pub fn per_doubling(&self) -> u32 {
        self.per_doubling
    }

    /// The largest file this schedule uploads (5 TiB unless `max_parts` is low).
    pub fn max_object(&self) -> u64 {
        self.max_object
    }

    /// The size part `number` (from 1) has unless it is the last.
    pub fn part_len(&self, number: u32) -> u64 {
        part_len(self.base, self.per_doubling, number)
    }

    /// The parts of a file of `size` bytes (one part of 0 bytes for an empty file);
    /// None if it is larger than [`PartSchedule::max_object`].
    pub fn parts(&self, size: u64) -> Option<Vec<Part>> {
        if size > self.max_object {
            return None;
        }
        let none = Part {
            number: 0,
            offset: 0,
            len: 0,
        };
        let mut parts = self.parts_after(none, size)?;
        if parts.is_empty() {
            parts.push(Part { number: 1, ..none });
        }
        Some(parts)
    }

    /// The parts that follow `done` (the last part already cut) up to `size` bytes, the
    /// last one cut short; None if that takes more than `max_parts` parts.
    pub fn parts_after(&self, done: Part, size: u64) -> Option<Vec<Part>> {
        let mut parts = Vec::new();
        let (mut number, mut offset) = (done.number, done.offset + done.len);
        while offset < size {
            number += 1;
            if number > self.max_parts {
                return None;
            }
            let len = self.part_len(number).min(size - offset);
            parts.push(Part {
                number,
                offset,
                len,
            });
            offset += len;
        }
        Some(parts)
    }
}

fn part_len(base: u64, per_doubling: u32, number: u32) -> u64 {
    let doublings = (number.max(1) - 1) / per_doubling;
    // base ≥ 2^22, so 30 doublings are past 5 GiB whatever the base.
    if doublings >= 30 {
        return MAX_PART;
    }
    (base << doublings).min(MAX_PART)
}

/// How many bytes `max_parts` parts hold when the size doubles every `per_doubling`.
fn reach(base: u64, max_parts: u32, per_doubling: u32) -> u64 {
    let mut total = 0u64;
    let mut first = 1u32;
    while first <= max_parts {
        let count = per_doubling.min(max_parts - first + 1);
        let len = part_len(base, per_doubling, first);
        total = total.saturating_add(len * count as u64);
        if len == MAX_PART {
            // Every later part is as large.
            let rest = (max_parts - first + 1 - count) as u64;
            return total.saturating_add(rest * MAX_PART);
        }
        first += count;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// The S3 rules every schedule keeps, checked over all of its parts.
    fn check(schedule: &PartSchedule) {
        let parts = schedule
            .parts(schedule.max_object())
            .expect("the largest object fits");
        assert!(parts.len() as u32 <= schedule.max_parts());
        let mut offset = 0;
        for (i, p) in parts.iter().enumerate() {
            assert_eq!(p.number as usize, i + 1);
            assert_eq!(p.offset, offset);
            assert!(p.len <= MAX_PART);
            if i + 1 < parts.len() {
                assert!(p.len >= MIN_PART);
                assert!(
                    p.len >= parts[i.saturating_sub(1)].len,
                    "parts never shrink"
                );
            }
            offset += p.len;
        }
        assert_eq!(offset, schedule.max_object());
        assert!(schedule.parts(schedule.max_object() + 1).is_none());
    }

    #[test]
    fn five_tib_fits_in_ten_thousand_parts_for_every_part_size() {
        for base in [5 * MIB, 8 * MIB, 16 * MIB, 100 * MIB, 1 << 30, MAX_PART] {
            let s = PartSchedule::new(base, MAX_PARTS);
            assert_eq!(s.max_object(), MAX_OBJECT, "base {base}");
            check(&s);
        }
    }

    #[test]
    fn parts_grow_only_as_far_as_needed() {
        let s = PartSchedule::new(8 * MIB, MAX_PARTS);
        // A file of 1,000 parts of 8 MiB is still cut in 8 MiB parts.
        assert!(s.per_doubling() >= 1000, "{}", s.per_doubling());
        assert_eq!(s.part_len(1), 8 * MIB);
        assert_eq!(s.part_len(s.per_doubling()), 8 * MIB);
        assert_eq!(s.part_len(s.per_doubling() + 1), 16 * MIB);
        // One doubling less and 5 TiB would not fit.
        assert!(reach(8 * MIB, MAX_PARTS, s.per_doubling() + 1) < MAX_OBJECT);
        // Parts of 5 GiB never need to grow.
        assert_eq!(
            PartSchedule::new(MAX_PART, MAX_PARTS).per_doubling(),
            MAX_PARTS
        );
    }

    #[test]
    fn a_service_with_fewer_parts_gets_its_largest_object() {
        let s = PartSchedule::new(5 * MIB, 100);
        assert_eq!(s.per_doubling(), 1);
        check(&s);
        let parts = s.parts(300 * MIB).unwrap();
        let lens: Vec<u64> = parts.iter().map(|p| p.len / MIB).collect();
        assert_eq!(lens, [5, 10, 20, 40, 80, 145]);
        let scaleway = PartSchedule::new(8 * MIB, 1000);
        check(&scaleway);
        assert!(scaleway.max_object() > 4 << 40);
    }

    #[test]
    fn streamed_and_known_sizes_cut_the_same_parts() {
        let s = PartSchedule::new(5 * MIB, 20);
        let size = 777 * MIB + 3;
        let whole = s.parts(size).unwrap();
        // Streaming starts parts one at a time, the last at close.
        let mut done = whole[0];
        let mut streamed = vec![done];
        while let Some(next) = s.parts_after(done, size).unwrap().first().copied() {
            streamed.push(next);
            done = next;
        }
        assert_eq!(streamed, whole);
        assert_eq!(s.parts(0).unwrap().len(), 1);
    }
}
