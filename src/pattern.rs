//! `regex` match operations: a small regular-expression engine of our own, because the
//! smallest linear-time crate (`regex-lite`) adds ~66 KB to the `.wasm` (BENCHMARKS.md), past
//! the size budget. Patterns are parsed and compiled once at load into a Thompson NFA and run
//! by a Pike VM: time linear in the value times the program size, never backtracking, so no
//! pattern can make a request slow (RE2 semantics for the syntax it accepts).
//!
//! Syntax (a subset of RE2's): literals, `.`, classes `[a-z0-9_]`, `[^…]`, `\d \w \s` and their
//! negations (also inside classes), escaped punctuation, `\t \n \r`, groups `(…)` and `(?:…)`,
//! `|`, `*`, `+`, `?`, `{n}`, `{n,}`, `{n,m}` (n, m ≤ 1000; a trailing `?` is accepted and
//! changes nothing, as only whether the whole value matches matters), `^` and `$`. The whole
//! value must match, as with Envoy's and Istio's `regex`. Patterns and values are bytes: `.`
//! and classes match one byte, and classes take ASCII only. Anything else (flags, Unicode
//! classes, backreferences, look-around, `\b`) is a config error, never a silent mismatch.

/// Longest pattern accepted, in bytes.
pub const MAX_PATTERN_LEN: usize = 1024;
/// Bound on one compiled program, in instructions (each step of a match visits each at most
/// once): keeps `x{1000}{1000}` from costing memory and time.
pub const MAX_INSTRUCTIONS: usize = 4096;
const MAX_REPEAT: u32 = 1000;
const MAX_NEST: usize = 32;

/// 256 bits: which bytes a class holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct ByteSet([u64; 4]);

impl ByteSet {
    fn add(&mut self, b: u8) {
        if let Some(w) = self.0.get_mut(usize::from(b >> 6)) {
            *w |= 1 << (b & 63);
        }
    }
    fn add_range(&mut self, lo: u8, hi: u8) {
        for b in lo..=hi {
            self.add(b);
        }
    }
    fn has(&self, b: u8) -> bool {
        self.0
            .get(usize::from(b >> 6))
            .is_some_and(|w| w & (1 << (b & 63)) != 0)
    }
    fn union(&mut self, other: &ByteSet) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a |= b;
        }
    }
    fn negate(&mut self) {
        for a in self.0.iter_mut() {
            *a = !*a;
        }
    }
    fn fold_case(&mut self) {
        for b in b'a'..=b'z' {
            let upper = b.to_ascii_uppercase();
            if self.has(b) || self.has(upper) {
                self.add(b);
                self.add(upper);
            }
        }
    }
    fn of(b: u8) -> ByteSet {
        let mut s = ByteSet::default();
        s.add(b);
        s
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Set(ByteSet),
    Start,
    End,
    Concat(Vec<Node>),
    Alt(Vec<Node>),
    Repeat(Box<Node>, u32, Option<u32>),
}

struct Parser<'a> {
    src: &'a [u8],
    at: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.src.get(self.at).copied()
    }
    fn eat(&mut self, b: u8) -> bool {
        let yes = self.peek() == Some(b);
        if yes {
            self.at += 1;
        }
        yes
    }
    fn next(&mut self) -> Result<u8, String> {
        let b = self.peek().ok_or("unexpected end of pattern")?;
        self.at += 1;
        Ok(b)
    }

    fn alt(&mut self) -> Result<Node, String> {
        self.depth += 1;
        if self.depth > MAX_NEST {
            return Err(format!("groups nest deeper than {MAX_NEST}"));
        }
        let mut branches = vec![self.concat()?];
        while self.eat(b'|') {
            branches.push(self.concat()?);
        }
        self.depth -= 1;
        Ok(if branches.len() == 1 {
            branches.pop().unwrap_or(Node::Concat(Vec::new()))
        } else {
            Node::Alt(branches)
        })
    }

    fn concat(&mut self) -> Result<Node, String> {
        let mut items = Vec::new();
        while let Some(b) = self.peek() {
            if b == b'|' || b == b')' {
                break;
            }
            let atom = self.atom()?;
            items.push(self.quantified(atom)?);
        }
        Ok(Node::Concat(items))
    }

    fn quantified(&mut self, atom: Node) -> Result<Node, String> {
        let single = match self.peek() {
            Some(b'*') => Some((0, None)),
            Some(b'+') => Some((1, None)),
            Some(b'?') => Some((0, Some(1))),
            _ => None,
        };
        let (min, max) = match single {
            Some(bounds) => {
                self.at += 1;
                bounds
            }
            None if self.peek() == Some(b'{') => match self.counted()? {
                Some(bounds) => bounds,
                None => return Ok(atom),
            },
            None => return Ok(atom),
        };
        if matches!(atom, Node::Start | Node::End) {
            return Err("a repetition needs something to repeat".to_string());
        }
        self.eat(b'?'); // non-greedy: the same set of whole matches
        if matches!(self.peek(), Some(b'*' | b'+' | b'?')) {
            return Err("repetition of a repetition: use a group".to_string());
        }
        Ok(Node::Repeat(Box::new(atom), min, max))
    }

    /// `{n}`, `{n,}`, `{n,m}`; `None` (and nothing consumed) when `{` starts no such form, in
    /// which case it is a literal, as in RE2.
    fn counted(&mut self) -> Result<Option<(u32, Option<u32>)>, String> {
        let rest = self.src.get(self.at..).unwrap_or(&[]);
        let Some(close) = rest.iter().position(|&b| b == b'}') else {
            return Ok(None);
        };
        let inner = rest.get(1..close).unwrap_or(&[]);
        let number = |s: &[u8]| -> Option<u32> {
            if s.is_empty() || s.len() > 9 || !s.iter().all(u8::is_ascii_digit) {
                return None;
            }
            std::str::from_utf8(s).ok()?.parse().ok()
        };
        let bounds = match inner.iter().position(|&b| b == b',') {
            None => number(inner).map(|n| (n, Some(n))),
            Some(comma) => {
                let lo = inner.get(..comma).and_then(number);
                let hi_text = inner.get(comma + 1..).unwrap_or(&[]);
                match (lo, hi_text.is_empty()) {
                    (Some(lo), true) => Some((lo, None)),
                    (Some(lo), false) => number(hi_text).map(|hi| (lo, Some(hi))),
                    (None, _) => None,
                }
            }
        };
        let Some((lo, hi)) = bounds else {
            return Ok(None);
        };
        if lo > MAX_REPEAT || hi.is_some_and(|h| h > MAX_REPEAT) {
            return Err(format!("repetition counts must be at most {MAX_REPEAT}"));
        }
        if hi.is_some_and(|h| h < lo) {
            return Err("repetition {n,m} with m below n".to_string());
        }
        self.at += close + 1;
        Ok(Some((lo, hi)))
    }

    fn atom(&mut self) -> Result<Node, String> {
        match self.next()? {
            b'(' => {
                if self.eat(b'?') && !self.eat(b':') {
                    return Err("flags and look-around are not supported".to_string());
                }
                let inner = self.alt()?;
                if !self.eat(b')') {
                    return Err("unclosed group".to_string());
                }
                Ok(inner)
            }
            b'[' => self.class(),
            b'.' => {
                let mut all = ByteSet::of(b'\n');
                all.negate();
                Ok(Node::Set(all))
            }
            b'^' => Ok(Node::Start),
            b'$' => Ok(Node::End),
            b'\\' => Ok(Node::Set(self.escape()?)),
            b'*' | b'+' | b'?' => Err("a repetition needs something to repeat".to_string()),
            b')' => Err("unopened group".to_string()),
            b => Ok(Node::Set(ByteSet::of(b))),
        }
    }

    /// After a backslash.
    fn escape(&mut self) -> Result<ByteSet, String> {
        let b = self.next()?;
        let mut set = ByteSet::default();
        match b {
            b'd' | b'D' => set.add_range(b'0', b'9'),
            b'w' | b'W' => {
                set.add_range(b'0', b'9');
                set.add_range(b'a', b'z');
                set.add_range(b'A', b'Z');
                set.add(b'_');
            }
            b's' | b'S' => {
                for c in [b' ', b'\t', b'\n', b'\r', 0x0b, 0x0c] {
                    set.add(c);
                }
            }
            b'n' => set.add(b'\n'),
            b't' => set.add(b'\t'),
            b'r' => set.add(b'\r'),
            b if b.is_ascii_punctuation() => set.add(b),
            b => return Err(format!("\\{} is not supported", char::from(b))),
        }
        if b.is_ascii_uppercase() {
            set.negate();
        }
        Ok(set)
    }

    fn class(&mut self) -> Result<Node, String> {
        let negated = self.eat(b'^');
        let mut set = ByteSet::default();
        let mut first = true;
        loop {
            let b = self.next().map_err(|_| "unclosed class".to_string())?;
            if b == b']' && !first {
                break;
            }
            first = false;
            let lo = match b {
                b'\\' => {
                    let before = self.at;
                    let escaped = self.escape()?;
                    // A single escaped byte can start a range; a class like \d cannot.
                    match self.src.get(before) {
                        Some(&e) if !b"dDwWsS".contains(&e) => escaped_byte(e),
                        _ => {
                            set.union(&escaped);
                            continue;
                        }
                    }
                }
                b if !b.is_ascii() => return Err("classes take ASCII only".to_string()),
                b => b,
            };
            if self.peek() == Some(b'-') && self.src.get(self.at + 1).is_some_and(|&n| n != b']') {
                self.at += 1;
                let hi = match self.next()? {
                    b'\\' => escaped_byte(self.next()?),
                    b => b,
                };
                if !hi.is_ascii() || hi < lo {
                    return Err("bad class range".to_string());
                }
                set.add_range(lo, hi);
            } else {
                set.add(lo);
            }
        }
        if negated {
            set.negate();
        }
        Ok(Node::Set(set))
    }
}

fn escaped_byte(e: u8) -> u8 {
    match e {
        b'n' => b'\n',
        b't' => b'\t',
        b'r' => b'\r',
        e => e,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Inst {
    Set(ByteSet),
    Start,
    End,
    Split(usize, usize),
    Jmp(usize),
    Match,
}

struct Compiler {
    prog: Vec<Inst>,
    fold: bool,
}

impl Compiler {
    fn push(&mut self, inst: Inst) -> Result<usize, String> {
        if self.prog.len() >= MAX_INSTRUCTIONS {
            return Err(format!(
                "compiles to more than {MAX_INSTRUCTIONS} instructions"
            ));
        }
        self.prog.push(inst);
        Ok(self.prog.len() - 1)
    }

    fn patch(&mut self, at: usize, inst: Inst) {
        if let Some(slot) = self.prog.get_mut(at) {
            *slot = inst;
        }
    }

    fn node(&mut self, node: &Node) -> Result<(), String> {
        match node {
            Node::Set(set) => {
                let mut set = *set;
                if self.fold {
                    set.fold_case();
                }
                self.push(Inst::Set(set))?;
            }
            Node::Start => {
                self.push(Inst::Start)?;
            }
            Node::End => {
                self.push(Inst::End)?;
            }
            Node::Concat(items) => {
                for item in items {
                    self.node(item)?;
                }
            }
            Node::Alt(branches) => {
                let mut jumps = Vec::new();
                for (i, branch) in branches.iter().enumerate() {
                    if i + 1 < branches.len() {
                        let split = self.push(Inst::Match)?;
                        self.node(branch)?;
                        jumps.push(self.push(Inst::Match)?);
                        let next = self.prog.len();
                        self.patch(split, Inst::Split(split + 1, next));
                    } else {
                        self.node(branch)?;
                    }
                }
                let end = self.prog.len();
                for j in jumps {
                    self.patch(j, Inst::Jmp(end));
                }
            }
            Node::Repeat(inner, min, max) => {
                for _ in 0..*min {
                    self.node(inner)?;
                }
                match max {
                    None => {
                        // L: split body, out; body; jmp L
                        let split = self.push(Inst::Match)?;
                        self.node(inner)?;
                        self.push(Inst::Jmp(split))?;
                        let out = self.prog.len();
                        self.patch(split, Inst::Split(split + 1, out));
                    }
                    Some(max) => {
                        let mut splits = Vec::new();
                        for _ in *min..*max {
                            splits.push(self.push(Inst::Match)?);
                            self.node(inner)?;
                        }
                        let out = self.prog.len();
                        for s in splits {
                            self.patch(s, Inst::Split(s + 1, out));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// A compiled pattern that must match the whole value.
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    prog: Vec<Inst>,
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.source == other.source
    }
}

impl Eq for Pattern {}

impl Pattern {
    /// `ignore_case`: ASCII letters match either case (for host names).
    pub fn new(source: &str, ignore_case: bool) -> Result<Pattern, String> {
        if source.len() > MAX_PATTERN_LEN {
            return Err(format!(
                "must be at most {MAX_PATTERN_LEN} bytes, got {}",
                source.len()
            ));
        }
        let mut parser = Parser {
            src: source.as_bytes(),
            at: 0,
            depth: 0,
        };
        let tree = parser.alt()?;
        if parser.at != source.len() {
            return Err("unopened group".to_string());
        }
        let mut compiler = Compiler {
            prog: Vec::new(),
            fold: ignore_case,
        };
        compiler.node(&tree)?;
        compiler.push(Inst::Match)?;
        Ok(Pattern {
            source: source.to_string(),
            prog: compiler.prog,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the whole `value` matches: a Pike VM, one pass over `value`, each instruction
    /// at most once per position.
    pub fn is_match(&self, value: &[u8]) -> bool {
        let n = self.prog.len();
        let mut current = Threads::new(n);
        let mut next = Threads::new(n);
        let mut stack = Vec::new();
        self.add(&mut current, 0, 0, value.len(), &mut stack);
        for (pos, &b) in value.iter().enumerate() {
            if current.list.is_empty() {
                return false;
            }
            next.clear();
            for &pc in &current.list {
                if let Some(Inst::Set(set)) = self.prog.get(pc) {
                    if set.has(b) {
                        self.add(&mut next, pc + 1, pos + 1, value.len(), &mut stack);
                    }
                }
            }
            std::mem::swap(&mut current, &mut next);
        }
        current
            .list
            .iter()
            .any(|&pc| matches!(self.prog.get(pc), Some(Inst::Match)))
    }

    /// Adds `pc` and everything reachable from it without consuming a byte.
    fn add(
        &self,
        threads: &mut Threads,
        pc: usize,
        pos: usize,
        len: usize,
        stack: &mut Vec<usize>,
    ) {
        stack.push(pc);
        while let Some(pc) = stack.pop() {
            if !threads.insert(pc) {
                continue;
            }
            match self.prog.get(pc) {
                Some(Inst::Jmp(to)) => stack.push(*to),
                Some(Inst::Split(a, b)) => {
                    stack.push(*b);
                    stack.push(*a);
                }
                Some(Inst::Start) if pos == 0 => stack.push(pc + 1),
                Some(Inst::End) if pos == len => stack.push(pc + 1),
                _ => {}
            }
        }
    }
}

/// A set of program counters, in insertion order.
struct Threads {
    list: Vec<usize>,
    seen: Vec<bool>,
}

impl Threads {
    fn new(n: usize) -> Threads {
        Threads {
            list: Vec::with_capacity(n),
            seen: vec![false; n],
        }
    }
    fn insert(&mut self, pc: usize) -> bool {
        match self.seen.get_mut(pc) {
            Some(seen) if !*seen => {
                *seen = true;
                self.list.push(pc);
                true
            }
            _ => false,
        }
    }
    fn clear(&mut self) {
        for &pc in &self.list {
            if let Some(seen) = self.seen.get_mut(pc) {
                *seen = false;
            }
        }
        self.list.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_values_match() {
        let p = Pattern::new(r"v[0-9]+\.(beta|rc)", false).unwrap();
        assert!(p.is_match(b"v12.beta"));
        assert!(!p.is_match(b"xv12.beta"), "anchored at the start");
        assert!(!p.is_match(b"v12.beta2"), "anchored at the end");
        assert!(!p.is_match(b"v1\xff.beta"));
        // An alternation is anchored as a whole, not only its first branch.
        let p = Pattern::new("a|b", false).unwrap();
        assert!(p.is_match(b"b") && !p.is_match(b"ab"));
        let p = Pattern::new(r"shop\.example", true).unwrap();
        assert!(p.is_match(b"Shop.EXAMPLE"));
        assert!(Pattern::new("^/api/.*$", false)
            .unwrap()
            .is_match(b"/api/x"));
        assert!(Pattern::new("", false).unwrap().is_match(b""));
        assert!(Pattern::new("a{2,3}", false).unwrap().is_match(b"aaa"));
        assert!(!Pattern::new("a{2,3}", false).unwrap().is_match(b"aaaa"));
        assert!(
            Pattern::new("x{", false).unwrap().is_match(b"x{"),
            "a literal brace"
        );
    }

    #[test]
    fn pathological_patterns_stay_linear() {
        // Exponential for a backtracking engine: (a+)+$ against "aaaa...!".
        let p = Pattern::new("(a+)+", false).unwrap();
        let mut value = vec![b'a'; 20_000];
        value.push(b'!');
        let start = std::time::Instant::now();
        assert!(!p.is_match(&value));
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn bad_and_oversized_patterns_are_errors() {
        for (pattern, why) in [
            ("(unclosed", "unclosed group"),
            ("a)", "unopened group"),
            ("a{2,1}", "repetition {n,m} with m below n"),
            ("a{1001}", "repetition counts must be at most 1000"),
            (
                "(((a{100}){100}){100})",
                "compiles to more than 4096 instructions",
            ),
            (r"(a)\1", "\\1 is not supported"),
            (r"\bword", "\\b is not supported"),
            ("a(?=b)", "flags and look-around are not supported"),
            ("(?i)a", "flags and look-around are not supported"),
            ("a**", "repetition of a repetition: use a group"),
            ("*a", "a repetition needs something to repeat"),
            ("[abc", "unclosed class"),
            ("[z-a]", "bad class range"),
        ] {
            assert_eq!(Pattern::new(pattern, false).unwrap_err(), why, "{pattern}");
        }
        assert_eq!(
            Pattern::new(&"a".repeat(1025), false).unwrap_err(),
            "must be at most 1024 bytes, got 1025"
        );
        assert_eq!(
            Pattern::new(&"(".repeat(40), false).unwrap_err(),
            "groups nest deeper than 32"
        );
    }

    /// The engine agrees with `regex-lite` (a linear-time RE2-style engine) on every pattern
    /// and value of a generated set: ASCII patterns in the shared syntax, full-match semantics.
    #[test]
    fn agrees_with_regex_lite() {
        let atoms = [
            "a", "b", ".", "[ab]", "[^a]", r"\d", r"\w", "(a|b)", "(?:ab|c)", r"\.", "[a-c0-2]",
        ];
        let quants = ["", "*", "+", "?", "{2}", "{1,2}", "{0,}", "*?"];
        let values: Vec<String> = {
            let alphabet = ["a", "b", "c", "1", ".", "_", "ab"];
            let mut v = vec![String::new()];
            for x in alphabet {
                for y in alphabet {
                    for z in ["", "a", "b", "9"] {
                        v.push(format!("{x}{y}{z}"));
                    }
                }
            }
            v
        };
        let mut checked = 0;
        for a in atoms {
            for qa in quants {
                for b in atoms {
                    for qb in ["", "*", "+"] {
                        for glue in ["", "|"] {
                            let pattern = format!("{a}{qa}{glue}{b}{qb}");
                            let ours = Pattern::new(&pattern, false).unwrap();
                            let theirs =
                                regex_lite::Regex::new(&format!("^(?:{pattern})$")).unwrap();
                            for v in &values {
                                assert_eq!(
                                    ours.is_match(v.as_bytes()),
                                    theirs.is_match(v),
                                    "/{pattern}/ on {v:?}"
                                );
                                checked += 1;
                            }
                        }
                    }
                }
            }
        }
        assert!(checked > 1_000_000, "{checked}");
    }
}
