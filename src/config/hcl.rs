//! Reading HCL with positions.
//!
//! hcl-edit keeps byte spans for every block and attribute; this module turns its syntax tree
//! into plain literal values that remember their line, so that validation can name the file and
//! line of every problem. It accepts literals only (strings, numbers, booleans, lists, maps):
//! a config that needs variables or functions is a config whose meaning depends on evaluation
//! order, and bulkhead's boundary must read the same to every reviewer.

use hcl::edit::expr::{Expression, ObjectKey};
use hcl::edit::structure::{Body, Structure};
use hcl::edit::template::{Element, Template};
use hcl::edit::Span;

/// One problem in a config file, at a line when the line is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub line: Option<usize>,
    pub message: String,
}

/// A literal value of an attribute.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    String(String),
    Number(f64),
    Bool(bool),
    List(Vec<Literal>),
    Map(Vec<(String, Literal)>),
}

impl Literal {
    /// How the value is named in error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Literal::String(_) => "a string",
            Literal::Number(_) => "a number",
            Literal::Bool(_) => "a boolean",
            Literal::List(_) => "a list",
            Literal::Map(_) => "a map",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Attr {
    pub name: String,
    pub value: Literal,
    pub line: usize,
}

#[derive(Debug, Clone)]
pub struct Block {
    pub kind: String,
    pub labels: Vec<String>,
    pub line: usize,
    pub attrs: Vec<Attr>,
    pub blocks: Vec<Block>,
}

/// Parses Terraform code leniently: attributes whose values are not literals (variables,
/// references, functions) are left out instead of refused.
pub fn parse_terraform(text: &str) -> Result<Block, Vec<Diagnostic>> {
    let body = parse_syntax(text)?;
    let mut ignored = Vec::new();
    Ok(read_body(
        &body,
        String::new(),
        Vec::new(),
        1,
        &LineIndex::new(text),
        &mut ignored,
    ))
}

fn parse_syntax(text: &str) -> Result<Body, Vec<Diagnostic>> {
    hcl::edit::parser::parse_body(text).map_err(|err| {
        vec![Diagnostic {
            line: Some(err.location().line()),
            message: format!("syntax error: {}", err.message()),
        }]
    })
}

/// Parses `text` into a root block (kind and labels empty). Syntax errors and non-literal
/// expressions are reported as diagnostics; nothing is returned unless the whole file reads.
pub fn parse(text: &str) -> Result<Block, Vec<Diagnostic>> {
    let body = parse_syntax(text)?;
    let lines = LineIndex::new(text);
    let mut diags = Vec::new();
    let root = read_body(&body, String::new(), Vec::new(), 1, &lines, &mut diags);
    if diags.is_empty() {
        Ok(root)
    } else {
        Err(diags)
    }
}

fn read_body(
    body: &Body,
    kind: String,
    labels: Vec<String>,
    line: usize,
    lines: &LineIndex,
    diags: &mut Vec<Diagnostic>,
) -> Block {
    let mut block = Block {
        kind,
        labels,
        line,
        attrs: Vec::new(),
        blocks: Vec::new(),
    };
    for structure in body.iter() {
        match structure {
            Structure::Attribute(attr) => {
                let line = lines.line_of(attr.span());
                let name = attr.key.as_str().to_string();
                match literal(&attr.value) {
                    Ok(value) => block.attrs.push(Attr { name, value, line }),
                    Err(problem) => diags.push(Diagnostic {
                        line: Some(line),
                        message: format!("attribute `{name}`: {problem}"),
                    }),
                }
            }
            Structure::Block(inner) => {
                let line = lines.line_of(inner.span());
                let labels = inner
                    .labels
                    .iter()
                    .map(|l| l.as_str().to_string())
                    .collect();
                block.blocks.push(read_body(
                    &inner.body,
                    inner.ident.as_str().to_string(),
                    labels,
                    line,
                    lines,
                    diags,
                ));
            }
        }
    }
    block
}

fn literal(expr: &Expression) -> Result<Literal, String> {
    Ok(match expr {
        Expression::String(s) => Literal::String(s.as_str().to_string()),
        Expression::Number(n) => Literal::Number(
            n.as_f64()
                .ok_or_else(|| "the number is out of range".to_string())?,
        ),
        Expression::Bool(b) => Literal::Bool(*b.value()),
        Expression::Array(items) => {
            Literal::List(items.iter().map(literal).collect::<Result<_, _>>()?)
        }
        Expression::Object(object) => {
            let mut entries = Vec::new();
            for (key, value) in object.iter() {
                let key = match key {
                    ObjectKey::Ident(ident) => ident.as_str().to_string(),
                    ObjectKey::Expression(Expression::String(s)) => s.as_str().to_string(),
                    ObjectKey::Expression(_) => {
                        return Err("map keys must be names or quoted strings".to_string())
                    }
                };
                entries.push((key, literal(value.expr())?));
            }
            Literal::Map(entries)
        }
        Expression::Parenthesis(inner) => literal(inner.inner())?,
        // `jsonencode({...})` of a literal, as Terraform IAM policies are often written.
        Expression::FuncCall(call)
            if call.name.namespace.is_empty() && call.name.name.as_str() == "jsonencode" =>
        {
            match call.args.iter().collect::<Vec<_>>().as_slice() {
                [arg] => literal(arg)?,
                _ => return Err("jsonencode takes one argument".into()),
            }
        }
        Expression::HeredocTemplate(heredoc) => Literal::String(heredoc_text(&heredoc.template)?),
        Expression::StringTemplate(_) => return Err(NO_INTERPOLATION.into()),
        _ => {
            return Err(
                "only literal values (strings, numbers, booleans, lists, maps) are allowed: \
                 variables, functions and expressions are not evaluated"
                    .into(),
            )
        }
    })
}

const NO_INTERPOLATION: &str =
    "string interpolation (`${...}`) is not supported: write the value out";

/// A heredoc without interpolation is a plain string.
fn heredoc_text(template: &Template) -> Result<String, String> {
    let mut text = String::new();
    for element in template.iter() {
        match element {
            Element::Literal(l) => text.push_str(l.as_str()),
            _ => return Err(NO_INTERPOLATION.into()),
        }
    }
    Ok(text)
}

/// Maps byte offsets to 1-based line numbers.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    fn line_of(&self, span: Option<std::ops::Range<usize>>) -> usize {
        let offset = span.map(|s| s.start).unwrap_or(0);
        match self.starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_blocks_attributes_and_lines() {
        let text = "a = 1\n\nteam \"x\" {\n  members = [\"p\", \"q\"]\n}\n";
        let root = parse(text).unwrap();
        assert_eq!(root.attrs[0].line, 1);
        let team = &root.blocks[0];
        assert_eq!((team.kind.as_str(), team.line), ("team", 3));
        assert_eq!(team.labels, vec!["x".to_string()]);
        assert_eq!(team.attrs[0].line, 4);
        assert_eq!(
            team.attrs[0].value,
            Literal::List(vec![
                Literal::String("p".into()),
                Literal::String("q".into())
            ])
        );
    }

    #[test]
    fn refuses_expressions_with_their_line() {
        let diags = parse("a = 1\nb = var.x\n").unwrap_err();
        assert_eq!(diags[0].line, Some(2));
        assert!(diags[0].message.contains("literal"));
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let diags = parse("a = 1\nteam \"x\" {\n").unwrap_err();
        assert!(diags[0].line.is_some());
        assert!(diags[0].message.starts_with("syntax error"));
    }
}
