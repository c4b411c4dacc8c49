//! Unit tests of the mapping on the map_basic fixtures are in tests/plan.rs (they need the
//! built fixtures); these cover the pure pieces.

use super::*;

#[test]
fn difference_display_names_path_what_and_decision() {
    let d = Difference {
        path: "struct item.legacy".into(),
        what: "field removed".into(),
        decision: Decision::Refused {
            reason: "its value would be lost".into(),
        },
    };
    assert_eq!(
        d.to_string(),
        "struct item.legacy: field removed: refused: its value would be lost"
    );
    assert!(d.decision.is_refused());
}
