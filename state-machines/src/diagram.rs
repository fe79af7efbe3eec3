//! State diagrams printed from the same edge tables `step` runs (`table.rs`), so the documentation cannot
//! drift from the code: Mermaid `stateDiagram-v2` for Markdown and Graphviz dot. Capacity-removing states are
//! highlighted.

use std::fmt::Write as _;

use crate::table::StateMachine;

/// Mermaid `stateDiagram-v2` source for one machine.
pub fn mermaid(m: &StateMachine) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "---\ntitle: {} state machine\n---", m.kind);
    out.push_str("stateDiagram-v2\n");
    let _ = writeln!(out, "    [*] --> {}", m.states[0]);
    for e in m.edges {
        let _ = writeln!(out, "    {} --> {}: {}", e.from, e.to, e.label);
    }
    out.push_str("    classDef capacity fill:#f8d0d0,stroke:#a00\n");
    let removing: Vec<&str> = m.states.iter().filter(|s| s.removes_capacity()).map(|s| s.as_str()).collect();
    if !removing.is_empty() {
        let _ = writeln!(out, "    class {} capacity", removing.join(","));
    }
    out
}

/// Graphviz dot source for one machine.
pub fn dot(m: &StateMachine) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph {} {{", m.kind);
    out.push_str("    rankdir=LR;\n    node [shape=box, style=rounded];\n");
    out.push_str("    start [shape=point];\n");
    let _ = writeln!(out, "    start -> {};", m.states[0]);
    for s in m.states {
        if s.removes_capacity() {
            let _ = writeln!(out, "    {s} [style=\"rounded,filled\", fillcolor=\"#f8d0d0\"];");
        } else {
            let _ = writeln!(out, "    {s};");
        }
    }
    for e in m.edges {
        let _ = writeln!(out, "    {} -> {} [label=\"{}\"];", e.from, e.to, e.label.replace('"', "'"));
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{DISK, MACHINE, MACHINE_KINDS, state_machine_for};

    #[test]
    fn diagrams_list_every_edge() {
        for kind in MACHINE_KINDS {
            let m = state_machine_for(kind).expect("machine");
            let (md, gv) = (mermaid(m), dot(m));
            assert!(md.contains("stateDiagram-v2"));
            for e in m.edges {
                assert!(md.contains(&format!("{} --> {}: {}", e.from, e.to, e.label)), "{kind} {e:?}");
                assert!(gv.contains(&format!("{} -> {} [label=", e.from, e.to)), "{kind} {e:?}");
            }
            assert_eq!(md.matches(" --> ").count(), m.edges.len() + 1);
        }
        assert!(mermaid(&DISK).contains("class ERROR,REPAIR capacity"));
        assert!(mermaid(&MACHINE).contains("class ERROR,FIX,REPAIR capacity"));
    }
}
