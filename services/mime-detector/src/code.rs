//! Source code, scripts and other text formats libmagic names by their
//! content: the rules follow the ones of Debian's libmagic (file 5.44,
//! `magic/Magdir/{javascript,python,ruby,c-lang,perl,m4,make,assembler,
//! troff,msdos,images}`), written as regular expressions over the sniff
//! window, in the order their strengths make libmagic try them. Each rule
//! needs a construct of the language at the start of a line (a
//! definition, an import, a directive), not a keyword in prose.

use regex::{Regex, RegexSet};
use std::sync::LazyLock;

/// The text type of `text` by its content, or `None` when no rule holds.
pub(crate) fn sniff(text: &str) -> Option<(&'static str, &'static str)> {
    RULES
        .iter()
        .find(|rule| rule.holds(text))
        .map(|rule| (rule.mime, rule.kind))
}

struct Rule {
    mime: &'static str,
    kind: &'static str,
    /// Any one of these matching is enough…
    any: RegexSet,
    /// …unless `then` is set: then a match of `then` must follow the
    /// first match of one of `starts` (libmagic's `&0` continuations).
    starts: Vec<Regex>,
    then: Option<Regex>,
}

impl Rule {
    fn holds(&self, text: &str) -> bool {
        let Some(then) = &self.then else {
            return self.any.is_match(text);
        };
        self.starts
            .iter()
            .filter_map(|start| start.find(text).map(|m| m.end()))
            .min()
            .is_some_and(|at| then.is_match(&text[at..]))
    }
}

fn rule(mime: &'static str, kind: &'static str, any: &[&str], then: Option<&str>) -> Rule {
    let multiline = |p: &str| format!("(?m){p}");
    Rule {
        mime,
        kind,
        any: RegexSet::new(any.iter().map(|p| multiline(p))).expect("valid rules"),
        starts: match then {
            Some(_) => any
                .iter()
                .map(|p| Regex::new(&multiline(p)).expect("valid rule"))
                .collect(),
            None => Vec::new(),
        },
        then: then.map(|p| Regex::new(&multiline(p)).expect("valid rule")),
    }
}

static RULES: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    vec![
        rule("image/x-xpixmap", "xpm", &[r"\A/\* XPM \*/"], None),
        rule("text/x-php", "php", &[r"\A\s*<\?php\b"], None),
        rule(
            "text/x-msdos-batch",
            "batch",
            &[r"(?i)\A@(echo off| echo off|rem\b|set )"],
            None,
        ),
        rule(
            "text/x-ruby",
            "ruby",
            &[r"^\s*(class|module)\s[A-Z]", r"^\s*def [a-z]"],
            Some(r"^\s*end(\s+[;#].*)?$"),
        ),
        rule(
            "text/x-perl",
            "perl",
            &[r#"eval ["']exec (/usr(/local)?)?(/bin/)?perl"#],
            None,
        ),
        rule(
            "application/javascript",
            "javascript",
            &[
                r#""use strict"|'use strict'"#,
                r#"module(\.|\[["'])exports.*="#,
                r"^(const|var|let).*=.*require\(",
                r"^export (function|class|default|const|var|let|async) ",
                r"\((async )?function[( ]",
                r"^(import|export).* from ",
                r#"^(import|export) ["']\./"#,
                r"typeof.*[!=]==",
            ],
            None,
        ),
        rule(
            "text/x-script.python",
            "python",
            &[
                r"^from[ \t]+[\w.]+[ \t]+import.*$",
                r"^import [_[:alpha:]]+ as [[:alpha:]]\s*$",
                r"^class [_[:alpha:]]+(\(.*\))? *:([ \t]+pass)?$",
                r"^\s{0,50}def {1,50}[_a-zA-Z]{1,100}\(([[:alpha:]*_, ]){0,255}\):$",
                r"def __init__\s*\(\s*self",
                r#"if __name__\s*==\s*['"]__main__['"]"#,
            ],
            None,
        ),
        rule(
            "text/x-c++",
            "c++",
            &[
                r"^namespace\s+[_[:alpha:]]{1,20}\s*\{",
                r"^using\s+(namespace )?std(::)?[[:alpha:]]*\s*;",
                r"^\s*template\s*<.*>\s*$",
                r"^\s*virtual\s+.*[};]\s*$",
                r"^\s*(public|private|protected):",
            ],
            None,
        ),
        rule(
            "text/x-c",
            "c",
            &[
                r"^#include",
                r"^#\s*pragma",
                r"^#\s*define",
                r"^\s*extern\s+",
                r"^struct\s+",
                r"^union\s+",
                r"^\s*(char|double|float)( \*|\*)(.+)(=.*)?;\s*$",
            ],
            None,
        ),
        rule("text/x-m4", "m4", &[r"^dnl ", r"^AC_DEFUN\(\["], None),
        rule(
            "text/x-makefile",
            "makefile",
            &[
                r"^(CFLAGS|VPATH|LDFLAGS|all:|\.PRECIOUS)",
                r"^SUBDIRS\s+=",
                r"^\.(BEGIN|endif|include)",
            ],
            None,
        ),
        rule(
            "text/x-asm",
            "asm",
            &[r"^[ \t]{0,50}\.(asciiz|byte|even|globl|text|file|type)"],
            None,
        ),
    ]
});

#[cfg(test)]
mod tests {
    use super::*;

    fn mime(text: &str) -> Option<&'static str> {
        sniff(text).map(|(mime, _)| mime)
    }

    #[test]
    fn languages_by_their_constructs() {
        assert_eq!(
            mime("/* XPM */\nstatic char *x[] = {\n"),
            Some("image/x-xpixmap")
        );
        assert_eq!(
            mime("# util\nfrom os.path import join\n\nprint(join('a', 'b'))\n"),
            Some("text/x-script.python")
        );
        assert_eq!(
            mime("class Greeter\n  def hi\n    puts 'hi'\n  end\nend\n"),
            Some("text/x-ruby")
        );
        assert_eq!(
            mime("'use strict';\nconst x = 1;\n"),
            Some("application/javascript")
        );
        assert_eq!(
            mime("#include <stdio.h>\nint main(void) { return 0; }\n"),
            Some("text/x-c")
        );
        assert_eq!(
            mime("#include <vector>\nnamespace app {\nint f();\n}\n"),
            Some("text/x-c++")
        );
        assert_eq!(mime("dnl a macro\nAC_INIT([x], [1])\n"), Some("text/x-m4"));
        assert_eq!(mime("CFLAGS = -O2\nall: x\n"), Some("text/x-makefile"));
        assert_eq!(mime("\t.text\n\t.globl main\nmain:\n"), Some("text/x-asm"));
        assert_eq!(mime("<?php echo 1;\n"), Some("text/x-php"));
    }

    #[test]
    fn prose_that_names_the_keywords_is_none() {
        assert_eq!(
            mime("You can import the module from the library.\nDefine a struct.\n"),
            None
        );
        assert_eq!(mime("The class ended early; the end.\n"), None);
    }
}
