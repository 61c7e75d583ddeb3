//! Finds how much of a stream's tail could still grow into a pattern.
//!
//! The `aho-corasick` crate does not expose the depth of its automaton states,
//! and its leftmost-longest automaton deliberately drops failure transitions
//! out of match states, so it cannot answer "what is the longest suffix of
//! this text that is a proper prefix of some pattern?". This small trie with
//! classic failure links answers exactly that, and only ever runs over the
//! last `max_len - 1` bytes of pending stream data, never the whole output.

use std::collections::VecDeque;

const ROOT: u32 = 0;

/// Nodes index into one shared edge array rather than owning a `Vec` each:
/// most nodes have a single child, and a heap allocation per node made the
/// trie several times larger than the automaton it accompanies.
#[derive(Debug, Clone, Copy)]
struct Node {
    edges_start: u32,
    edges_len: u16,
    fail: u32,
    /// Depth of the deepest node on this node's failure chain (itself
    /// included) that still has children, i.e. the length of the longest
    /// suffix ending here that some pattern extends beyond.
    hold: u32,
}

#[derive(Debug)]
pub(crate) struct PrefixTrie {
    nodes: Vec<Node>,
    /// Per node, sorted by byte so lookups can binary-search.
    edges: Vec<(u8, u32)>,
    /// The root's children by byte (`ROOT` for none): every failure chain
    /// ends at the root, and its many children make a search the slowest
    /// lookup of a step.
    root: Box<[u32; 256]>,
    max_len: usize,
}

/// Child lookup in the construction-time representation.
fn child_of(children: &[Vec<(u8, u32)>], node: u32, byte: u8) -> Option<u32> {
    let edges = children.get(node as usize)?;
    let i = edges.binary_search_by_key(&byte, |&(b, _)| b).ok()?;
    edges.get(i).map(|&(_, next)| next)
}

impl PrefixTrie {
    /// Returns `None` only if the patterns have more than `u32::MAX` bytes
    /// in total, far beyond what the matching automaton could hold either.
    pub(crate) fn new<'a>(patterns: impl IntoIterator<Item = &'a [u8]>) -> Option<PrefixTrie> {
        let mut children: Vec<Vec<(u8, u32)>> = vec![Vec::new()];
        let mut max_len = 0;
        for pattern in patterns {
            max_len = max_len.max(pattern.len());
            let mut cur = ROOT;
            for &byte in pattern {
                cur = match child_of(&children, cur, byte) {
                    Some(next) => next,
                    None => {
                        let next = u32::try_from(children.len()).ok()?;
                        children.push(Vec::new());
                        let edges = &mut children[cur as usize];
                        let at = edges.partition_point(|&(b, _)| b < byte);
                        edges.insert(at, (byte, next));
                        next
                    }
                };
            }
        }

        // Breadth-first so a node's failure target (always shallower) is
        // finished before the node itself.
        let n = children.len();
        let mut fail = vec![ROOT; n];
        let mut hold = vec![0u32; n];
        let mut depth = vec![0u32; n];
        let mut queue: VecDeque<u32> = children[ROOT as usize].iter().map(|&(_, c)| c).collect();
        for &c in &queue {
            depth[c as usize] = 1;
        }
        while let Some(node) = queue.pop_front() {
            let node_fail = fail[node as usize];
            hold[node as usize] = if children[node as usize].is_empty() {
                hold[node_fail as usize]
            } else {
                depth[node as usize]
            };
            for &(byte, child) in &children[node as usize] {
                let mut f = node_fail;
                let target = loop {
                    if let Some(next) = child_of(&children, f, byte) {
                        break next;
                    }
                    if f == ROOT {
                        break ROOT;
                    }
                    f = fail[f as usize];
                };
                fail[child as usize] = target;
                depth[child as usize] = depth[node as usize] + 1;
                queue.push_back(child);
            }
        }

        let mut nodes = Vec::with_capacity(n);
        let mut edges = Vec::with_capacity(n.saturating_sub(1));
        for (i, own) in children.iter().enumerate() {
            nodes.push(Node {
                edges_start: u32::try_from(edges.len()).ok()?,
                edges_len: u16::try_from(own.len()).ok()?,
                fail: fail[i],
                hold: hold[i],
            });
            edges.extend_from_slice(own);
        }

        let mut root = Box::new([ROOT; 256]);
        for &(byte, child) in &children[ROOT as usize] {
            root[usize::from(byte)] = child;
        }

        Some(PrefixTrie {
            nodes,
            edges,
            root,
            max_len,
        })
    }

    fn child(&self, node: &Node, byte: u8) -> Option<u32> {
        let start = node.edges_start as usize;
        let edges = self.edges.get(start..start + usize::from(node.edges_len))?;
        let i = edges.binary_search_by_key(&byte, |&(b, _)| b).ok()?;
        edges.get(i).map(|&(_, next)| next)
    }

    fn node(&self, id: u32) -> &Node {
        &self.nodes[id as usize]
    }

    fn step(&self, mut state: u32, byte: u8) -> u32 {
        while state != ROOT {
            let node = self.node(state);
            if let Some(next) = self.child(node, byte) {
                return next;
            }
            state = node.fail;
        }
        self.root[usize::from(byte)]
    }

    /// Length of the longest suffix of `data` that is a proper prefix of some
    /// pattern.
    pub(crate) fn held_suffix_len(&self, data: &[u8]) -> usize {
        // A proper prefix is at most max_len - 1 bytes, so nothing earlier
        // can matter.
        let window = data.len().min(self.max_len.saturating_sub(1));
        let tail = &data[data.len() - window..];
        let state = tail.iter().fold(ROOT, |s, &b| self.step(s, b));
        self.node(state).hold as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute_force(patterns: &[&[u8]], data: &[u8]) -> usize {
        (0..=data.len())
            .map(|i| &data[i..])
            .find(|suffix| {
                patterns
                    .iter()
                    .any(|p| p.len() > suffix.len() && p.starts_with(suffix))
            })
            .map_or(0, <[u8]>::len)
    }

    fn trie(patterns: &[&[u8]]) -> PrefixTrie {
        PrefixTrie::new(patterns.iter().copied()).expect("tiny pattern set fits")
    }

    #[test]
    fn examples() {
        let t = trie(&[b"secret", b"cretin", b"xy"]);
        assert_eq!(t.held_suffix_len(b"hello\n"), 0);
        assert_eq!(t.held_suffix_len(b"a sec"), 3);
        // "secre" and "cre" both qualify; the longer wins.
        assert_eq!(t.held_suffix_len(b"a secre"), 5);
        // A complete pattern that nothing extends is not held...
        assert_eq!(t.held_suffix_len(b"axy"), 0);
        // ...but its own suffix may be, via the failure chain.
        assert_eq!(t.held_suffix_len(b"secret"), 4); // "cret" of "cretin"
        assert_eq!(t.held_suffix_len(b""), 0);
    }

    #[test]
    fn matches_brute_force() {
        let patterns: [&[u8]; 5] = [b"abab", b"abc", b"bca", b"aaaab", b"cab"];
        let t = trie(&patterns);
        let alphabet = b"abcx";
        // Every string over the alphabet up to length 6.
        for len in 0..=6u32 {
            for mut code in 0..alphabet.len().pow(len) {
                let mut data = Vec::new();
                for _ in 0..len {
                    data.push(alphabet[code % alphabet.len()]);
                    code /= alphabet.len();
                }
                assert_eq!(
                    t.held_suffix_len(&data),
                    brute_force(&patterns, &data),
                    "{:?}",
                    String::from_utf8_lossy(&data)
                );
            }
        }
    }

    #[test]
    fn empty_trie_holds_nothing() {
        let t = trie(&[]);
        assert_eq!(t.held_suffix_len(b"anything"), 0);
    }
}
