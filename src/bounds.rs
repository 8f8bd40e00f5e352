//! Range checks for every number a user or a file supplies, before it sizes an allocation or a
//! loop. Each check's message names the setting (as the command line spells it) and the range.

use std::fmt::Display;
use std::ops::RangeInclusive;

/// `name` must lie in `range` (NaN never does).
pub fn check<T: PartialOrd + Display + Copy>(
    name: &str,
    value: T,
    range: RangeInclusive<T>,
) -> Result<(), String> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "{name} is {value}: it must be between {} and {}",
            range.start(),
            range.end()
        ))
    }
}

/// `name` must be a finite number above 0 and at most `max`.
pub fn check_positive(name: &str, value: f64, max: f64) -> Result<(), String> {
    if value > 0.0 && value <= max {
        Ok(())
    } else {
        Err(format!(
            "{name} is {value}: it must be above 0 and at most {max}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_setting_and_the_range() {
        assert!(check("batch", 4, 1..=4096).is_ok());
        assert_eq!(
            check("batch", 0, 1..=4096).unwrap_err(),
            "batch is 0: it must be between 1 and 4096"
        );
        assert!(check("dropout", f64::NAN, 0.0..=0.9).is_err());
        assert!(check_positive("lr", f64::NAN, 1.0).is_err());
        assert!(check_positive("lr", f64::INFINITY, 1.0).is_err());
        assert!(check_positive("lr", 0.0, 1.0).is_err());
        assert!(check_positive("lr", 1e-3, 1.0).is_ok());
    }
}
