//! Objectives: what an optimized image should make the network do, as small composable terms
//! (Lucid's `optvis.objectives`), a text grammar for them, and their evaluation on a traced
//! batch (per-image values and the gradient with respect to the traced node outputs).
//!
//! # Grammar
//!
//! ```text
//! expr    := term (('+' | '-') term)*
//! term    := unary (('*' | '/') unary)*        // '/' only by a constant
//! unary   := '-' unary | primary
//! primary := NUMBER
//!          | '(' expr ')'
//!          | LAYER ':' INT                           channel: mean of channel INT of LAYER
//!          | 'channel' '(' LAYER ',' INT ')'         the same
//!          | 'neuron' '(' LAYER ':' INT [',' X ',' Y] ')'
//!                                                    one unit: the centre (W/2, H/2) or column X, row Y
//!          | 'layer' '(' LAYER ')' | 'dream' '(' LAYER ')'
//!                                                    DeepDream: mean of squares of the whole layer
//!          | 'position' '(' LAYER ',' X ',' Y ')'   DeepDream at one place: mean over channels of
//!                                                     the squares at column X, row Y
//!          | 'class' '(' INT | "NAME" | NAME ')'     an ImageNet logit, by index or by name
//!          | 'direction' '(' LAYER ',' FILE ')'     mean over positions of ⟨activation vector, v⟩
//!          | 'direction' '(' LAYER ',' FILE ',' X ',' Y ')'
//!                                                    ⟨activation vector at column X, row Y, v⟩
//!                                                     (Lucid's `direction_neuron`)
//!          | 'diversity' '(' LAYER ')'              −(mean pairwise cosine similarity of the
//!                                                     Gram matrices of LAYER across the batch)
//!          | 'caricature' '(' LAYER ',' PHOTO ')'   ⟨activation vector, p⟩ averaged over
//!                                                     positions, p the photo's own (see below)
//! ```
//!
//! LAYER is a node name as `deepvis layers` lists it (`features.28`, `_blocks.8`, `_fc`) or a
//! bare index for models with a feature Sequential (`28`). Names are runs of letters, digits,
//! `_`, `.`, `/` and `~`; anything else (spaces, hyphens in file names) goes in double quotes.
//! FILE holds the direction vector, one float per channel: a text file of numbers separated by
//! whitespace or commas (so a JSON list works), or `FILE.safetensors:TENSOR` /
//! `FILE.pth:TENSOR` for a tensor of a weights file.
//!
//! `caricature(LAYER, PHOTO)` is Lucid's caricature objective `dot_compare(LAYER)` (with
//! `cossim_pow` 0) in its spatially pooled form: p is the PNG/JPEG photo's activation at LAYER
//! averaged over positions (the photo resized to the model's native size), so the image is
//! pushed toward what the layer sees in the photo, wherever it appears; start from the photo
//! (`--init`) for a caricature of it. Pooling makes it independent of the image size and of the
//! random transforms' offsets, which Lucid's per-position comparison is not.
//!
//! X and Y index the layer's output grid (column, row from the top left), whose size depends
//! on the image size: binding checks them at the model's native size, evaluation at the size
//! at hand.
//!
//! Examples: `features.28:15`, `_blocks.8:3 - 0.5 * _blocks.8:7`,
//! `class("Egyptian cat") + 0.1 * dream(_blocks.12)`, `_blocks.8:3 + 100 * diversity(_blocks.8)`.
//!
//! Every value is per image, to be maximized; a batch's scalar is the sum over its images.

use crate::RenderError;
use deepvis_engine::{Graph, NodeId, Tensor, Trace};
use deepvis_models::Model;
use std::fmt;
use std::ops::{Add, Mul, Neg, Sub};

/// A byte range of the source text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

/// A parse or bind error, pointing at the offending text.
#[derive(Clone, Debug, PartialEq)]
pub struct SpecError {
    pub message: String,
    pub span: Span,
    pub source: String,
}

impl SpecError {
    fn new(message: impl Into<String>, span: Span, source: &str) -> SpecError {
        SpecError {
            message: message.into(),
            span,
            source: source.to_string(),
        }
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let start = self.span.start.min(self.source.len());
        let width = self.source[start..self.span.end.clamp(start, self.source.len())]
            .chars()
            .count()
            .max(1);
        let col = self.source[..start].chars().count();
        writeln!(
            f,
            "{} (at byte {} of the objective)",
            self.message, self.span.start
        )?;
        writeln!(f, "  {}", self.source)?;
        write!(f, "  {}{}", " ".repeat(col), "^".repeat(width))
    }
}

impl std::error::Error for SpecError {}

// ---------------------------------------------------------------------------------------------
// Lexer

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    LParen,
    RParen,
    Comma,
    Colon,
    Plus,
    Minus,
    Star,
    Slash,
    End,
}

#[derive(Clone, Debug)]
struct Token {
    tok: Tok,
    span: Span,
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '~')
}

fn lex(src: &str) -> Result<Vec<Token>, SpecError> {
    let mut out = Vec::new();
    let bytes: Vec<(usize, char)> = src.char_indices().collect();
    let mut i = 0;
    while i < bytes.len() {
        let (pos, c) = bytes[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let single = match c {
            '(' => Some(Tok::LParen),
            ')' => Some(Tok::RParen),
            ',' => Some(Tok::Comma),
            ':' => Some(Tok::Colon),
            '+' => Some(Tok::Plus),
            '-' => Some(Tok::Minus),
            '*' => Some(Tok::Star),
            '/' if out.last().after_value() => Some(Tok::Slash),
            _ => None,
        };
        if let Some(tok) = single {
            out.push(Token {
                tok,
                span: Span {
                    start: pos,
                    end: pos + c.len_utf8(),
                },
            });
            i += 1;
            continue;
        }
        if c == '"' {
            let mut j = i + 1;
            let mut text = String::new();
            while j < bytes.len() && bytes[j].1 != '"' {
                text.push(bytes[j].1);
                j += 1;
            }
            if j == bytes.len() {
                return Err(SpecError::new(
                    "unterminated string: a closing '\"' is missing",
                    Span {
                        start: pos,
                        end: src.len(),
                    },
                    src,
                ));
            }
            let end = bytes[j].0 + 1;
            out.push(Token {
                tok: Tok::Str(text),
                span: Span { start: pos, end },
            });
            i = j + 1;
            continue;
        }
        if is_word_char(c) {
            let mut j = i;
            while j < bytes.len() {
                let ch = bytes[j].1;
                if is_word_char(ch) {
                    j += 1;
                    continue;
                }
                // An exponent sign inside a number: 1e-3.
                let word = &src[pos..bytes[j].0];
                if matches!(ch, '+' | '-')
                    && (word.ends_with('e') || word.ends_with('E'))
                    && word[..word.len() - 1].parse::<f64>().is_ok()
                    && bytes.get(j + 1).is_some_and(|b| b.1.is_ascii_digit())
                {
                    j += 1;
                    continue;
                }
                break;
            }
            let end = bytes.get(j).map_or(src.len(), |b| b.0);
            out.push(Token {
                tok: Tok::Word(src[pos..end].to_string()),
                span: Span { start: pos, end },
            });
            i = j;
            continue;
        }
        return Err(SpecError::new(
            format!("unexpected character '{c}'"),
            Span {
                start: pos,
                end: pos + c.len_utf8(),
            },
            src,
        ));
    }
    out.push(Token {
        tok: Tok::End,
        span: Span {
            start: src.len(),
            end: src.len(),
        },
    });
    Ok(out)
}

/// '/' is a word character (paths) unless it stands where an operator may: after a value.
trait LastTok {
    fn after_value(&self) -> bool;
}

impl LastTok for Option<&Token> {
    fn after_value(&self) -> bool {
        // After a word, string or ')' a '/' reads as division; words themselves swallow '/'
        // when it is inside them (lexed as word chars), so this only fires with spaces around.
        matches!(
            self.map(|t| &t.tok),
            Some(Tok::Word(_)) | Some(Tok::Str(_)) | Some(Tok::RParen)
        )
    }
}

// ---------------------------------------------------------------------------------------------
// AST

/// A layer as written, with where it was written.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerRef {
    pub name: String,
    pub span: Span,
}

/// A spatial position (column x, row y) as written, with where each number was written.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PosRef {
    pub x: usize,
    pub y: usize,
    pub x_span: Span,
    pub y_span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ClassRef {
    Index(usize),
    Name(String),
}

/// A parsed, unbound objective.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    Num(f64),
    Channel {
        layer: LayerRef,
        channel: usize,
        channel_span: Span,
    },
    Neuron {
        layer: LayerRef,
        channel: usize,
        channel_span: Span,
        at: Option<(usize, usize)>,
    },
    Layer(LayerRef),
    Position {
        layer: LayerRef,
        at: PosRef,
    },
    Class(ClassRef),
    Caricature {
        layer: LayerRef,
        photo: String,
    },
    Direction {
        layer: LayerRef,
        file: String,
        at: Option<PosRef>,
    },
    Diversity(LayerRef),
    Add(Box<Expr>, Box<Expr>),
    Sub(Box<Expr>, Box<Expr>),
    Mul(Box<Expr>, Box<Expr>),
    Div(Box<Expr>, Box<Expr>),
    Neg(Box<Expr>),
}

struct Parser<'a> {
    src: &'a str,
    toks: Vec<Token>,
    pos: usize,
    /// Parentheses and unary minuses open around the current position.
    depth: usize,
}

/// Parsing, binding, printing and dropping recurse over the tree, so its depth must be bounded
/// whatever the input: `((((…` or `- - - …` a million deep would overflow the stack. A long
/// `a + a + …` chain is as deep as it is long, hence the token cap too; real objectives have a
/// few dozen tokens.
const MAX_NESTING: usize = 64;
const MAX_TOKENS: usize = 2000;

impl<'a> Parser<'a> {
    fn peek(&self) -> &Token {
        &self.toks[self.pos]
    }

    fn next(&mut self) -> Token {
        let t = self.toks[self.pos].clone();
        if self.pos + 1 < self.toks.len() {
            self.pos += 1;
        }
        t
    }

    fn err<T>(&self, message: impl Into<String>, span: Span) -> Result<T, SpecError> {
        Err(SpecError::new(message, span, self.src))
    }

    fn describe(tok: &Tok) -> String {
        match tok {
            Tok::Word(w) => format!("'{w}'"),
            Tok::Str(s) => format!("\"{s}\""),
            Tok::LParen => "'('".into(),
            Tok::RParen => "')'".into(),
            Tok::Comma => "','".into(),
            Tok::Colon => "':'".into(),
            Tok::Plus => "'+'".into(),
            Tok::Minus => "'-'".into(),
            Tok::Star => "'*'".into(),
            Tok::Slash => "'/'".into(),
            Tok::End => "the end".into(),
        }
    }

    fn expect(&mut self, tok: Tok, what: &str) -> Result<Token, SpecError> {
        let t = self.peek().clone();
        if t.tok == tok {
            Ok(self.next())
        } else {
            self.err(
                format!("expected {what}, found {}", Self::describe(&t.tok)),
                t.span,
            )
        }
    }

    fn expr(&mut self) -> Result<Expr, SpecError> {
        let mut lhs = self.term()?;
        loop {
            let op = self.peek().tok.clone();
            if !matches!(op, Tok::Plus | Tok::Minus) {
                return Ok(lhs);
            }
            self.next();
            let rhs = self.term()?;
            let span = Span {
                start: lhs.span.start,
                end: rhs.span.end,
            };
            let kind = if op == Tok::Plus {
                ExprKind::Add(Box::new(lhs), Box::new(rhs))
            } else {
                ExprKind::Sub(Box::new(lhs), Box::new(rhs))
            };
            lhs = Expr { kind, span };
        }
    }

    fn term(&mut self) -> Result<Expr, SpecError> {
        let mut lhs = self.unary()?;
        loop {
            let op = self.peek().tok.clone();
            if !matches!(op, Tok::Star | Tok::Slash) {
                return Ok(lhs);
            }
            self.next();
            let rhs = self.unary()?;
            let span = Span {
                start: lhs.span.start,
                end: rhs.span.end,
            };
            let kind = if op == Tok::Star {
                ExprKind::Mul(Box::new(lhs), Box::new(rhs))
            } else {
                if constant(&rhs).is_none() {
                    return self.err("only division by a constant is supported", rhs.span);
                }
                ExprKind::Div(Box::new(lhs), Box::new(rhs))
            };
            lhs = Expr { kind, span };
        }
    }

    /// Enters one level of parentheses or unary minus at `span`.
    fn nest(&mut self, span: Span) -> Result<(), SpecError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return self.err(
                format!("nested more than {MAX_NESTING} deep; simplify the objective"),
                span,
            );
        }
        Ok(())
    }

    fn unary(&mut self) -> Result<Expr, SpecError> {
        if self.peek().tok == Tok::Minus {
            let m = self.next();
            self.nest(m.span)?;
            let inner = self.unary()?;
            self.depth -= 1;
            let span = Span {
                start: m.span.start,
                end: inner.span.end,
            };
            return Ok(Expr {
                kind: ExprKind::Neg(Box::new(inner)),
                span,
            });
        }
        self.primary()
    }

    fn integer(&mut self, what: &str) -> Result<(usize, Span), SpecError> {
        let t = self.next();
        match &t.tok {
            Tok::Word(w) if w.chars().all(|c| c.is_ascii_digit()) => w
                .parse::<usize>()
                .map(|v| (v, t.span))
                .or_else(|_| self.err(format!("{what} is too large"), t.span)),
            other => self.err(
                format!(
                    "expected {what} (a non-negative integer), found {}",
                    Self::describe(other)
                ),
                t.span,
            ),
        }
    }

    /// `',' X ',' Y`.
    fn position(&mut self) -> Result<PosRef, SpecError> {
        self.expect(Tok::Comma, "',' and a column x")?;
        let (x, x_span) = self.integer("a column x")?;
        self.expect(Tok::Comma, "',' and a row y")?;
        let (y, y_span) = self.integer("a row y")?;
        Ok(PosRef {
            x,
            y,
            x_span,
            y_span,
        })
    }

    /// `LAYER, FILE`: the arguments of `caricature(…)` and `direction(…)`.
    fn layer_and_file(&mut self, what: &str) -> Result<(LayerRef, String), SpecError> {
        let layer = self.layer()?;
        self.expect(Tok::Comma, &format!("',' and {what}"))?;
        let t = self.next();
        match t.tok {
            Tok::Word(w) | Tok::Str(w) => Ok((layer, w)),
            other => self.err(
                format!("expected {what}, found {}", Self::describe(&other)),
                t.span,
            ),
        }
    }

    fn layer(&mut self) -> Result<LayerRef, SpecError> {
        let t = self.next();
        match t.tok {
            Tok::Word(name) | Tok::Str(name) => Ok(LayerRef { name, span: t.span }),
            other => self.err(
                format!("expected a layer name, found {}", Self::describe(&other)),
                t.span,
            ),
        }
    }

    fn primary(&mut self) -> Result<Expr, SpecError> {
        let t = self.next();
        match t.tok.clone() {
            Tok::LParen => {
                self.nest(t.span)?;
                let inner = self.expr()?;
                let close = self.expect(Tok::RParen, "')'")?;
                self.depth -= 1;
                Ok(Expr {
                    kind: inner.kind,
                    span: Span {
                        start: t.span.start,
                        end: close.span.end,
                    },
                })
            }
            Tok::Word(word) => {
                match self.peek().tok {
                    Tok::LParen => return self.call(&word, t.span),
                    Tok::Colon => {
                        self.next();
                        let (channel, channel_span) = self.integer("a channel number")?;
                        return Ok(Expr {
                            kind: ExprKind::Channel {
                                layer: LayerRef {
                                    name: word,
                                    span: t.span,
                                },
                                channel,
                                channel_span,
                            },
                            span: Span {
                                start: t.span.start,
                                end: channel_span.end,
                            },
                        });
                    }
                    _ => {}
                }
                if let Ok(v) = word.parse::<f64>() {
                    if v.is_finite() {
                        return Ok(Expr {
                            kind: ExprKind::Num(v),
                            span: t.span,
                        });
                    }
                }
                self.err(
                    format!(
                        "'{word}' is neither a number nor a term; write LAYER:CHANNEL for a channel, or one of neuron(…), layer(…), dream(…), position(…), class(…), direction(…), diversity(…), caricature(…)"
                    ),
                    t.span,
                )
            }
            other => self.err(
                format!(
                    "expected a number, a term or '(', found {}",
                    Self::describe(&other)
                ),
                t.span,
            ),
        }
    }

    fn call(&mut self, name: &str, name_span: Span) -> Result<Expr, SpecError> {
        self.expect(Tok::LParen, "'('")?;
        let kind = match name {
            "channel" => {
                let layer = self.layer()?;
                self.expect(Tok::Comma, "',' and a channel number")?;
                let (channel, channel_span) = self.integer("a channel number")?;
                ExprKind::Channel {
                    layer,
                    channel,
                    channel_span,
                }
            }
            "neuron" => {
                let layer = self.layer()?;
                self.expect(Tok::Colon, "':' and a channel number (neuron(LAYER:CHANNEL))")?;
                let (channel, channel_span) = self.integer("a channel number")?;
                let at = if self.peek().tok == Tok::Comma {
                    self.next();
                    let (x, _) = self.integer("a column x")?;
                    self.expect(Tok::Comma, "',' and a row y")?;
                    let (y, _) = self.integer("a row y")?;
                    Some((x, y))
                } else {
                    None
                };
                ExprKind::Neuron {
                    layer,
                    channel,
                    channel_span,
                    at,
                }
            }
            "layer" | "dream" => ExprKind::Layer(self.layer()?),
            "position" => ExprKind::Position {
                layer: self.layer()?,
                at: self.position()?,
            },
            "diversity" => ExprKind::Diversity(self.layer()?),
            "class" => {
                let t = self.next();
                match t.tok {
                    Tok::Word(w) if w.chars().all(|c| c.is_ascii_digit()) => {
                        ExprKind::Class(ClassRef::Index(w.parse().or_else(|_| {
                            self.err("class index is too large", t.span)
                        })?))
                    }
                    Tok::Word(w) | Tok::Str(w) => ExprKind::Class(ClassRef::Name(w)),
                    other => {
                        return self.err(
                            format!(
                                "expected a class index or name, found {}",
                                Self::describe(&other)
                            ),
                            t.span,
                        )
                    }
                }
            }
            "caricature" => {
                let (layer, photo) = self.layer_and_file("a photo file")?;
                ExprKind::Caricature { layer, photo }
            }
            "direction" => {
                let (layer, file) = self.layer_and_file("a file name")?;
                // FILE.safetensors:TENSOR written without quotes.
                let file = if self.peek().tok == Tok::Colon {
                    self.next();
                    let t = self.next();
                    match t.tok {
                        Tok::Word(w) | Tok::Str(w) => format!("{file}:{w}"),
                        other => {
                            return self.err(
                                format!(
                                    "expected a tensor name, found {}",
                                    Self::describe(&other)
                                ),
                                t.span,
                            )
                        }
                    }
                } else {
                    file
                };
                let at = if self.peek().tok == Tok::Comma {
                    Some(self.position()?)
                } else {
                    None
                };
                ExprKind::Direction { layer, file, at }
            }
            _ => {
                return self.err(
                    format!(
                        "unknown function '{name}'; known: channel, neuron, layer, dream, position, class, direction, diversity, caricature"
                    ),
                    name_span,
                )
            }
        };
        let close = self.expect(Tok::RParen, "')'")?;
        Ok(Expr {
            kind,
            span: Span {
                start: name_span.start,
                end: close.span.end,
            },
        })
    }
}

fn constant(e: &Expr) -> Option<f64> {
    match &e.kind {
        ExprKind::Num(v) => Some(*v),
        ExprKind::Neg(a) => constant(a).map(|v| -v),
        ExprKind::Add(a, b) => Some(constant(a)? + constant(b)?),
        ExprKind::Sub(a, b) => Some(constant(a)? - constant(b)?),
        ExprKind::Mul(a, b) => Some(constant(a)? * constant(b)?),
        ExprKind::Div(a, b) => Some(constant(a)? / constant(b)?),
        _ => None,
    }
}

/// Parses an objective into its syntax tree (no model needed).
pub fn parse(src: &str) -> Result<Expr, SpecError> {
    let toks = lex(src)?;
    if let Some(t) = toks.get(MAX_TOKENS) {
        return Err(SpecError::new(
            format!("the objective has more than {MAX_TOKENS} tokens; shorten it"),
            t.span,
            src,
        ));
    }
    let mut p = Parser {
        src,
        toks,
        pos: 0,
        depth: 0,
    };
    if p.peek().tok == Tok::End {
        return p.err("empty objective", p.peek().span);
    }
    let e = p.expr()?;
    let t = p.peek().clone();
    if t.tok != Tok::End {
        return p.err(
            format!(
                "unexpected {} after a complete objective (missing '+', '-' or '*'?)",
                Parser::describe(&t.tok)
            ),
            t.span,
        );
    }
    Ok(e)
}

// ---------------------------------------------------------------------------------------------
// Bound objectives

/// A layer of a model: its node and its name.
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    pub node: NodeId,
    pub name: String,
}

/// An objective bound to a model's nodes, ready to evaluate.
#[derive(Clone, Debug, PartialEq)]
pub enum Objective {
    Const(f32),
    /// Mean of one channel over positions (or one feature of a `[N, F]` layer).
    Channel {
        layer: Layer,
        channel: usize,
    },
    /// One unit: the centre `(W/2, H/2)`, or column x, row y.
    Neuron {
        layer: Layer,
        channel: usize,
        at: Option<(usize, usize)>,
    },
    /// DeepDream: mean over all of the layer's values of their squares.
    LayerSquares(Layer),
    /// DeepDream at one place: mean over channels of the squares at column x, row y.
    Position {
        layer: Layer,
        at: (usize, usize),
    },
    /// One logit of the classifier head.
    Class {
        layer: Layer,
        index: usize,
        name: Option<String>,
    },
    /// ⟨activation vector, direction⟩: averaged over positions, or at column x, row y
    /// (Lucid's `direction_neuron`).
    Direction {
        layer: Layer,
        vector: Vec<f32>,
        source: String,
        at: Option<(usize, usize)>,
        /// Written as `caricature(LAYER, source)`: the vector is the photo `source`'s.
        caricature: bool,
    },
    /// −(mean over the other images of the cosine similarity of their Gram matrices).
    Diversity(Layer),
    /// What [`Objective::uncapped`] optimizes for a channel (`neuron: None`) or neuron
    /// (`Some(at)`) of a capped activation `layer`: computed from its input `pre`, with the
    /// gradient redirected through the cap (see `saturate.rs`). Its value is `layer`'s.
    Capped {
        layer: Layer,
        pre: Layer,
        cap: crate::saturate::Cap,
        channel: usize,
        neuron: Option<Option<(usize, usize)>>,
    },
    Add(Box<Objective>, Box<Objective>),
    Sub(Box<Objective>, Box<Objective>),
    Mul(Box<Objective>, Box<Objective>),
    Neg(Box<Objective>),
}

fn model_layer(model: &Model, r: &LayerRef, src: &str) -> Result<Layer, SpecError> {
    let node = model
        .layer(&r.name)
        .map_err(|e| SpecError::new(e.to_string(), r.span, src))?;
    Ok(Layer {
        node,
        name: model.graph.nodes()[node].name.clone(),
    })
}

fn channel_count(model: &Model, layer: &Layer, span: Span, src: &str) -> Result<usize, SpecError> {
    model
        .channels_at(layer.node, model.info.native_size)
        .map_err(|e| SpecError::new(e.to_string(), span, src))
}

/// Checks that `layer` has spatial positions and that `at` is one of them at the model's native
/// size (evaluation checks again at the size at hand).
fn check_position(
    model: &Model,
    layer: &Layer,
    r: &LayerRef,
    at: &PosRef,
    src: &str,
) -> Result<(usize, usize), SpecError> {
    let (ih, iw) = model.info.native_size;
    let shapes = model
        .graph
        .shapes(&[1, model.info.channels, ih, iw], layer.node)
        .map_err(|e| SpecError::new(e.to_string(), r.span, src))?;
    let shape = shapes[layer.node].clone().unwrap_or_default();
    if shape.len() != 4 {
        return Err(SpecError::new(
            format!(
                "{} has no spatial positions (its output is {shape:?})",
                layer.name
            ),
            r.span,
            src,
        ));
    }
    let (h, w) = (shape[2], shape[3]);
    for (v, n, what, span) in [(at.x, w, "column", at.x_span), (at.y, h, "row", at.y_span)] {
        if v >= n {
            return Err(SpecError::new(
                format!(
                    "{what} {v} is out of range: {} has {w}×{h} positions (W×H) at the native {ih}×{iw} input, {what}s 0..{}",
                    layer.name,
                    n.saturating_sub(1)
                ),
                span,
                src,
            ));
        }
    }
    Ok((at.x, at.y))
}

/// Reads a direction vector: `FILE.safetensors:TENSOR`, `FILE.pth:TENSOR`, or a text file of
/// numbers separated by whitespace, commas or brackets.
pub fn load_direction(file: &str) -> Result<Vec<f32>, String> {
    for ext in [".safetensors:", ".pth:", ".pt:"] {
        if let Some(i) = file.find(ext) {
            let (path, tensor) = (&file[..i + ext.len() - 1], &file[i + ext.len()..]);
            let dict = deepvis_weights::load(std::path::Path::new(path))
                .map_err(|e| format!("cannot read {path}: {e}"))?;
            let t = dict.get(tensor).ok_or_else(|| {
                let keys: Vec<&str> = dict.keys().take(5).collect();
                format!("{path} has no tensor '{tensor}' (it has e.g. {keys:?})")
            })?;
            return Ok(t.data.clone());
        }
    }
    let too_big = |len: u64| {
        format!(
            "{file} is {} MiB, far more than a direction's list of numbers (one per channel); check the file",
            len >> 20
        )
    };
    let meta = std::fs::metadata(file).map_err(|e| format!("cannot read {file}: {e}"))?;
    // Devices and pipes (`/dev/zero`) would be read until memory runs out.
    if !meta.is_file() {
        return Err(format!(
            "{file} is not a regular file (a directory, device or pipe); give a text file of numbers or FILE.safetensors:NAME"
        ));
    }
    if meta.len() > MAX_DIRECTION_TEXT {
        return Err(too_big(meta.len()));
    }
    let text = std::fs::read(file).map_err(|e| format!("cannot read {file}: {e}"))?;
    parse_direction_text(&text, file)
}

/// A text direction file is a list of numbers, one per channel; 64 MiB holds millions.
const MAX_DIRECTION_TEXT: u64 = 64 << 20;

/// Parses the text form of a direction file: numbers separated by whitespace, commas or
/// brackets (so a JSON list works). `file` names it in errors.
pub fn parse_direction_text(text: &[u8], file: &str) -> Result<Vec<f32>, String> {
    let text = std::str::from_utf8(text)
        .map_err(|e| format!("cannot read {file}: it is not text ({e}); give a list of numbers or FILE.safetensors:NAME"))?;
    text.split(|c: char| c.is_whitespace() || matches!(c, ',' | '[' | ']'))
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<f32>()
                .map_err(|_| format!("{file}: '{s}' is not a number"))
        })
        .collect()
}

impl Expr {
    /// Resolves layers, channels, classes and files against `model`. `src` is the text this
    /// was parsed from (for error carets).
    pub fn bind(&self, model: &Model, src: &str) -> Result<Objective, SpecError> {
        let check_channel = |layer: &Layer, ch: usize, span: Span| -> Result<(), SpecError> {
            let c = channel_count(model, layer, span, src)?;
            if ch >= c {
                return Err(SpecError::new(
                    format!(
                        "channel {ch} is out of range: {} has {c} channels (0..{})",
                        layer.name,
                        c - 1
                    ),
                    span,
                    src,
                ));
            }
            Ok(())
        };
        Ok(match &self.kind {
            ExprKind::Num(v) => Objective::Const(*v as f32),
            ExprKind::Channel {
                layer,
                channel,
                channel_span,
            } => {
                let l = model_layer(model, layer, src)?;
                check_channel(&l, *channel, *channel_span)?;
                Objective::Channel {
                    layer: l,
                    channel: *channel,
                }
            }
            ExprKind::Neuron {
                layer,
                channel,
                channel_span,
                at,
            } => {
                let l = model_layer(model, layer, src)?;
                check_channel(&l, *channel, *channel_span)?;
                Objective::Neuron {
                    layer: l,
                    channel: *channel,
                    at: *at,
                }
            }
            ExprKind::Layer(r) => Objective::LayerSquares(model_layer(model, r, src)?),
            ExprKind::Position { layer, at } => {
                let l = model_layer(model, layer, src)?;
                let at = check_position(model, &l, layer, at, src)?;
                Objective::Position { layer: l, at }
            }
            ExprKind::Diversity(r) => Objective::Diversity(model_layer(model, r, src)?),
            ExprKind::Class(c) => {
                if !model.has_head {
                    return Err(SpecError::new(
                        "class objectives need the classifier head, which these weights lack",
                        self.span,
                        src,
                    ));
                }
                let node = model.graph.last();
                let layer = Layer {
                    node,
                    name: model.graph.nodes()[node].name.clone(),
                };
                let classes = channel_count(model, &layer, self.span, src)?;
                let (index, name) = match c {
                    ClassRef::Index(i) => (*i, None),
                    ClassRef::Name(n) => (
                        deepvis_models::imagenet_class_index(n)
                            .map_err(|e| SpecError::new(e.to_string(), self.span, src))?,
                        Some(n.clone()),
                    ),
                };
                if index >= classes {
                    return Err(SpecError::new(
                        format!("class {index} is out of range: the model has {classes} classes"),
                        self.span,
                        src,
                    ));
                }
                Objective::Class { layer, index, name }
            }
            ExprKind::Direction { layer, file, at } => {
                let l = model_layer(model, layer, src)?;
                let at = at
                    .as_ref()
                    .map(|at| check_position(model, &l, layer, at, src))
                    .transpose()?;
                let vector = load_direction(file).map_err(|e| SpecError::new(e, self.span, src))?;
                let c = channel_count(model, &l, layer.span, src)?;
                if vector.len() != c {
                    return Err(SpecError::new(
                        format!(
                            "the direction in {file} has {} values, but {} has {c} channels",
                            vector.len(),
                            l.name
                        ),
                        self.span,
                        src,
                    ));
                }
                Objective::Direction {
                    layer: l,
                    vector,
                    source: file.clone(),
                    at,
                    caricature: false,
                }
            }
            ExprKind::Caricature { layer, photo } => {
                let l = model_layer(model, layer, src)?;
                let vector = crate::caricature::photo_vector(model, l.node, photo)
                    .map_err(|e| SpecError::new(e, self.span, src))?;
                Objective::Direction {
                    layer: l,
                    vector,
                    source: photo.clone(),
                    at: None,
                    caricature: true,
                }
            }
            ExprKind::Add(a, b) => {
                Objective::Add(Box::new(a.bind(model, src)?), Box::new(b.bind(model, src)?))
            }
            ExprKind::Sub(a, b) => {
                Objective::Sub(Box::new(a.bind(model, src)?), Box::new(b.bind(model, src)?))
            }
            ExprKind::Mul(a, b) => {
                Objective::Mul(Box::new(a.bind(model, src)?), Box::new(b.bind(model, src)?))
            }
            ExprKind::Div(a, b) => {
                let d = constant(b).expect("checked by the parser");
                if d == 0.0 {
                    return Err(SpecError::new("division by zero", b.span, src));
                }
                Objective::Mul(
                    Box::new(a.bind(model, src)?),
                    Box::new(Objective::Const((1.0 / d) as f32)),
                )
            }
            ExprKind::Neg(a) => Objective::Neg(Box::new(a.bind(model, src)?)),
        })
    }
}

/// Per-node gradients of an objective, accumulated over its terms.
#[derive(Default, Debug)]
pub struct NodeGrads {
    entries: Vec<(NodeId, Tensor)>,
}

impl NodeGrads {
    fn slot(&mut self, node: NodeId, shape: &[usize]) -> &mut Tensor {
        if let Some(i) = self.entries.iter().position(|(n, _)| *n == node) {
            return &mut self.entries[i].1;
        }
        self.entries.push((node, Tensor::zeros(shape)));
        &mut self.entries.last_mut().expect("just pushed").1
    }

    /// The gradient with respect to `node`'s output, if any term reached it.
    pub fn get(&self, node: NodeId) -> Option<&Tensor> {
        self.entries
            .iter()
            .find(|(n, _)| *n == node)
            .map(|(_, t)| t)
    }

    /// The seeds for `Graph::backward_multi`.
    pub fn into_seeds(self) -> Vec<(NodeId, Tensor)> {
        self.entries
    }
}

fn traced<'t>(trace: &'t Trace, layer: &Layer) -> Result<&'t Tensor, RenderError> {
    trace
        .value(layer.node)
        .ok_or_else(|| RenderError::Invalid(format!("layer {} was not traced", layer.name)))
}

/// (n, channels, positions) of a `[N, C, …]` tensor.
fn dims(t: &Tensor) -> (usize, usize, usize) {
    let s = t.shape();
    (s[0], s[1], s[2..].iter().product())
}

fn images(n: usize, only: Option<usize>) -> std::ops::Range<usize> {
    match only {
        Some(b) => b..b + 1,
        None => 0..n,
    }
}

impl Objective {
    /// Parses `src` and binds it to `model`.
    pub fn parse(src: &str, model: &Model) -> Result<Objective, SpecError> {
        parse(src)?.bind(model, src)
    }

    pub fn channel(model: &Model, layer: &str, channel: usize) -> Result<Objective, RenderError> {
        Objective::parse(&format!("channel(\"{layer}\", {channel})"), model)
            .map_err(|e| RenderError::Invalid(e.message))
    }

    /// The traced nodes this objective reads, sorted, without repeats.
    pub fn nodes(&self) -> Vec<NodeId> {
        let mut out = Vec::new();
        self.collect_nodes(&mut out);
        out.sort_unstable();
        out.dedup();
        out
    }

    fn collect_nodes(&self, out: &mut Vec<NodeId>) {
        match self {
            Objective::Const(_) => {}
            Objective::Channel { layer, .. }
            | Objective::Neuron { layer, .. }
            | Objective::LayerSquares(layer)
            | Objective::Position { layer, .. }
            | Objective::Class { layer, .. }
            | Objective::Direction { layer, .. }
            | Objective::Diversity(layer) => out.push(layer.node),
            Objective::Capped { pre, .. } => out.push(pre.node),
            Objective::Add(a, b) | Objective::Sub(a, b) | Objective::Mul(a, b) => {
                a.collect_nodes(out);
                b.collect_nodes(out);
            }
            Objective::Neg(a) => a.collect_nodes(out),
        }
    }

    /// The one node this objective reads and the channels of it that it reads, where that is
    /// only some channels of one node (channel and neuron objectives and their combinations);
    /// None where it reads whole layers or several nodes. The engine then computes only those
    /// channels of that node (`Graph::forward_channels`).
    pub fn channels_read(&self) -> Option<(NodeId, Vec<usize>)> {
        match self.reads()? {
            Reads::Nothing => None,
            Reads::Channels(node, ch) => Some((node, ch)),
        }
    }

    /// None: whole layers, or several nodes.
    fn reads(&self) -> Option<Reads> {
        match self {
            Objective::Const(_) => Some(Reads::Nothing),
            Objective::Channel { layer, channel } | Objective::Neuron { layer, channel, .. } => {
                Some(Reads::Channels(layer.node, vec![*channel]))
            }
            Objective::Capped { pre, channel, .. } => {
                Some(Reads::Channels(pre.node, vec![*channel]))
            }
            Objective::Add(a, b) | Objective::Sub(a, b) | Objective::Mul(a, b) => {
                Reads::union(a.reads()?, b.reads()?)
            }
            Objective::Neg(a) => a.reads(),
            Objective::LayerSquares(_)
            | Objective::Position { .. }
            | Objective::Class { .. }
            | Objective::Direction { .. }
            | Objective::Diversity(_) => None,
        }
    }

    /// Whether the value of one image depends on the other images of the batch.
    pub fn uses_batch(&self) -> bool {
        match self {
            Objective::Diversity(_) => true,
            Objective::Add(a, b) | Objective::Sub(a, b) | Objective::Mul(a, b) => {
                a.uses_batch() || b.uses_batch()
            }
            Objective::Neg(a) => a.uses_batch(),
            _ => false,
        }
    }

    /// Values for the images of a batch of `n` (only image `only` when given; the others are 0).
    pub fn values(
        &self,
        trace: &Trace,
        n: usize,
        only: Option<usize>,
    ) -> Result<Vec<f32>, RenderError> {
        let mut v = vec![0.0f32; n];
        match self {
            Objective::Const(c) => {
                for b in images(n, only) {
                    v[b] = *c;
                }
            }
            Objective::Channel { layer, channel } => {
                let t = traced(trace, layer)?;
                let (_, c, plane) = dims(t);
                for b in images(n, only) {
                    let off = (b * c + channel) * plane;
                    let sum: f64 = t.data()[off..off + plane].iter().map(|&x| x as f64).sum();
                    v[b] = (sum / plane as f64) as f32;
                }
            }
            Objective::Neuron { layer, channel, at } => {
                let t = traced(trace, layer)?;
                let (_, c, plane) = dims(t);
                let p = neuron_offset(t, *at)?;
                for b in images(n, only) {
                    v[b] = t.data()[(b * c + channel) * plane + p];
                }
            }
            Objective::LayerSquares(layer) => {
                let t = traced(trace, layer)?;
                let per = t.numel() / n;
                for b in images(n, only) {
                    let s: f64 = t.data()[b * per..(b + 1) * per]
                        .iter()
                        .map(|&x| (x as f64) * (x as f64))
                        .sum();
                    v[b] = (s / per as f64) as f32;
                }
            }
            Objective::Position { layer, at } => {
                let t = traced(trace, layer)?;
                let (_, c, plane) = dims(t);
                let p = position_offset(t, layer, *at, "position")?;
                for b in images(n, only) {
                    let s: f64 = (0..c)
                        .map(|ch| (t.data()[(b * c + ch) * plane + p] as f64).powi(2))
                        .sum();
                    v[b] = (s / c as f64) as f32;
                }
            }
            Objective::Class { layer, index, .. } => {
                let t = traced(trace, layer)?;
                let (_, c, plane) = dims(t);
                for b in images(n, only) {
                    v[b] = t.data()[(b * c + index) * plane];
                }
            }
            Objective::Direction {
                layer,
                vector,
                at: Some(at),
                ..
            } => {
                let t = traced(trace, layer)?;
                let (_, c, plane) = dims(t);
                let p = position_offset(t, layer, *at, "direction")?;
                for b in images(n, only) {
                    let s: f64 = vector
                        .iter()
                        .enumerate()
                        .take(c)
                        .map(|(ch, d)| t.data()[(b * c + ch) * plane + p] as f64 * *d as f64)
                        .sum();
                    v[b] = s as f32;
                }
            }
            Objective::Direction {
                layer,
                vector,
                at: None,
                ..
            } => {
                let t = traced(trace, layer)?;
                let (_, c, plane) = dims(t);
                for b in images(n, only) {
                    let mut s = 0.0f64;
                    for (ch, d) in vector.iter().enumerate().take(c) {
                        let off = (b * c + ch) * plane;
                        let sum: f64 = t.data()[off..off + plane].iter().map(|&x| x as f64).sum();
                        s += sum * *d as f64;
                    }
                    v[b] = (s / plane as f64) as f32;
                }
            }
            Objective::Diversity(layer) => {
                let t = traced(trace, layer)?;
                let d = Diversity::new(t);
                for b in images(n, only) {
                    v[b] = d.value(b);
                }
            }
            Objective::Capped {
                pre,
                cap,
                channel,
                neuron,
                ..
            } => {
                let t = traced(trace, pre)?;
                let (_, c, plane) = dims(t);
                let p = neuron.map(|at| neuron_offset(t, at)).transpose()?;
                for b in images(n, only) {
                    let off = (b * c + channel) * plane;
                    v[b] = match p {
                        Some(p) => cap.value(t.data()[off + p]),
                        None => {
                            let sum: f64 = t.data()[off..off + plane]
                                .iter()
                                .map(|&x| cap.value(x) as f64)
                                .sum();
                            (sum / plane as f64) as f32
                        }
                    };
                }
            }
            Objective::Add(a, b) => {
                let (x, y) = (a.values(trace, n, only)?, b.values(trace, n, only)?);
                v.iter_mut()
                    .zip(x.iter().zip(&y))
                    .for_each(|(o, (x, y))| *o = x + y);
            }
            Objective::Sub(a, b) => {
                let (x, y) = (a.values(trace, n, only)?, b.values(trace, n, only)?);
                v.iter_mut()
                    .zip(x.iter().zip(&y))
                    .for_each(|(o, (x, y))| *o = x - y);
            }
            Objective::Mul(a, b) => {
                let (x, y) = (a.values(trace, n, only)?, b.values(trace, n, only)?);
                v.iter_mut()
                    .zip(x.iter().zip(&y))
                    .for_each(|(o, (x, y))| *o = x * y);
            }
            Objective::Neg(a) => {
                v = a.values(trace, n, only)?;
                v.iter_mut().for_each(|x| *x = -*x);
            }
        }
        Ok(v)
    }

    /// Adds to `grads` the gradient of Σ_b scale[b] · value_b (b over `only`, or all images)
    /// with respect to the traced node outputs.
    pub fn accumulate_grad(
        &self,
        trace: &Trace,
        n: usize,
        only: Option<usize>,
        scale: &[f32],
        grads: &mut NodeGrads,
    ) -> Result<(), RenderError> {
        match self {
            Objective::Const(_) => {}
            Objective::Channel { layer, channel } => {
                let t = traced(trace, layer)?;
                let (_, c, plane) = dims(t);
                let g = grads.slot(layer.node, t.shape());
                for b in images(n, only) {
                    let off = (b * c + channel) * plane;
                    let k = scale[b] * (1.0 / plane as f32);
                    g.data_mut()[off..off + plane]
                        .iter_mut()
                        .for_each(|x| *x += k);
                }
            }
            Objective::Neuron { layer, channel, at } => {
                let t = traced(trace, layer)?;
                let (_, c, plane) = dims(t);
                let p = neuron_offset(t, *at)?;
                let g = grads.slot(layer.node, t.shape());
                for b in images(n, only) {
                    g.data_mut()[(b * c + channel) * plane + p] += scale[b];
                }
            }
            Objective::LayerSquares(layer) => {
                let t = traced(trace, layer)?;
                let per = t.numel() / n;
                let g = grads.slot(layer.node, t.shape());
                for b in images(n, only) {
                    let k = scale[b] * 2.0 / per as f32;
                    for (gx, x) in g.data_mut()[b * per..(b + 1) * per]
                        .iter_mut()
                        .zip(&t.data()[b * per..(b + 1) * per])
                    {
                        *gx += k * x;
                    }
                }
            }
            Objective::Position { layer, at } => {
                let t = traced(trace, layer)?;
                let (_, c, plane) = dims(t);
                let p = position_offset(t, layer, *at, "position")?;
                let g = grads.slot(layer.node, t.shape());
                for b in images(n, only) {
                    let k = scale[b] * 2.0 / c as f32;
                    for ch in 0..c {
                        let i = (b * c + ch) * plane + p;
                        g.data_mut()[i] += k * t.data()[i];
                    }
                }
            }
            Objective::Class { layer, index, .. } => {
                let t = traced(trace, layer)?;
                let (_, c, plane) = dims(t);
                let g = grads.slot(layer.node, t.shape());
                for b in images(n, only) {
                    g.data_mut()[(b * c + index) * plane] += scale[b];
                }
            }
            Objective::Direction {
                layer,
                vector,
                at: Some(at),
                ..
            } => {
                let t = traced(trace, layer)?;
                let (_, c, plane) = dims(t);
                let p = position_offset(t, layer, *at, "direction")?;
                let g = grads.slot(layer.node, t.shape());
                for b in images(n, only) {
                    for (ch, d) in vector.iter().enumerate().take(c) {
                        g.data_mut()[(b * c + ch) * plane + p] += scale[b] * d;
                    }
                }
            }
            Objective::Direction {
                layer,
                vector,
                at: None,
                ..
            } => {
                let t = traced(trace, layer)?;
                let (_, c, plane) = dims(t);
                let g = grads.slot(layer.node, t.shape());
                for b in images(n, only) {
                    for (ch, d) in vector.iter().enumerate().take(c) {
                        let off = (b * c + ch) * plane;
                        let k = scale[b] * d / plane as f32;
                        g.data_mut()[off..off + plane]
                            .iter_mut()
                            .for_each(|x| *x += k);
                    }
                }
            }
            Objective::Diversity(layer) => {
                let t = traced(trace, layer)?;
                let d = Diversity::new(t);
                let mut w = vec![0.0f32; n];
                for b in images(n, only) {
                    w[b] = scale[b];
                }
                let g = grads.slot(layer.node, t.shape());
                d.accumulate_grad(t, &w, g);
            }
            Objective::Capped {
                pre,
                cap,
                channel,
                neuron,
                ..
            } => {
                let t = traced(trace, pre)?;
                let (_, c, plane) = dims(t);
                let p = neuron.map(|at| neuron_offset(t, at)).transpose()?;
                let g = grads.slot(pre.node, t.shape());
                for b in images(n, only) {
                    let off = (b * c + channel) * plane;
                    let x = &t.data()[off..off + plane];
                    let gx = &mut g.data_mut()[off..off + plane];
                    let read = match p {
                        Some(p) => p..p + 1,
                        None => 0..plane,
                    };
                    let k = scale[b] / read.len() as f32;
                    // Nothing comes through a dead unit: push it up through the floor.
                    let revive = scale[b] > 0.0 && x[read.clone()].iter().all(|&v| cap.dead(v));
                    for i in read {
                        let slope = if revive {
                            cap.linear_slope()
                        } else {
                            cap.redirected_slope(x[i])
                        };
                        gx[i] += k * slope;
                    }
                }
            }
            Objective::Add(a, b) => {
                a.accumulate_grad(trace, n, only, scale, grads)?;
                b.accumulate_grad(trace, n, only, scale, grads)?;
            }
            Objective::Sub(a, b) => {
                a.accumulate_grad(trace, n, only, scale, grads)?;
                let neg: Vec<f32> = scale.iter().map(|s| -s).collect();
                b.accumulate_grad(trace, n, only, &neg, grads)?;
            }
            Objective::Mul(a, b) => {
                // Constants need no values (the common `2 * a` case).
                let va = match **a {
                    Objective::Const(c) => vec![c; n],
                    _ => a.values(trace, n, only)?,
                };
                let vb = match **b {
                    Objective::Const(c) => vec![c; n],
                    _ => b.values(trace, n, only)?,
                };
                let sa: Vec<f32> = scale.iter().zip(&vb).map(|(s, y)| s * y).collect();
                let sb: Vec<f32> = scale.iter().zip(&va).map(|(s, x)| s * x).collect();
                a.accumulate_grad(trace, n, only, &sa, grads)?;
                b.accumulate_grad(trace, n, only, &sb, grads)?;
            }
            Objective::Neg(a) => {
                let neg: Vec<f32> = scale.iter().map(|s| -s).collect();
                a.accumulate_grad(trace, n, only, &neg, grads)?;
            }
        }
        Ok(())
    }

    fn precedence(&self) -> u8 {
        match self {
            Objective::Add(..) | Objective::Sub(..) => 1,
            Objective::Mul(..) => 2,
            Objective::Neg(_) => 3,
            Objective::Const(c) if *c < 0.0 => 3,
            _ => 4,
        }
    }

    fn fmt_prec(&self, f: &mut fmt::Formatter<'_>, min: u8) -> fmt::Result {
        let paren = self.precedence() < min;
        if paren {
            write!(f, "(")?;
        }
        match self {
            Objective::Const(c) => write!(f, "{c}")?,
            Objective::Channel { layer, channel } => write!(f, "{}:{channel}", layer.name)?,
            Objective::Neuron { layer, channel, at } => match at {
                Some((x, y)) => write!(f, "neuron({}:{channel}, {x}, {y})", layer.name)?,
                None => write!(f, "neuron({}:{channel})", layer.name)?,
            },
            Objective::LayerSquares(layer) => write!(f, "dream({})", layer.name)?,
            Objective::Position { layer, at: (x, y) } => {
                write!(f, "position({}, {x}, {y})", layer.name)?
            }
            Objective::Class { index, name, .. } => match name {
                Some(n) => write!(f, "class(\"{n}\")")?,
                None => write!(f, "class({index})")?,
            },
            Objective::Direction {
                layer,
                source,
                caricature: true,
                ..
            } => write!(f, "caricature({}, \"{source}\")", layer.name)?,
            Objective::Direction {
                layer, source, at, ..
            } => {
                write!(f, "direction({}, \"{source}\"", layer.name)?;
                if let Some((x, y)) = at {
                    write!(f, ", {x}, {y}")?;
                }
                write!(f, ")")?
            }
            Objective::Diversity(layer) => write!(f, "diversity({})", layer.name)?,
            Objective::Capped {
                layer,
                channel,
                neuron,
                ..
            } => match neuron {
                None => write!(f, "{}:{channel}", layer.name)?,
                Some(None) => write!(f, "neuron({}:{channel})", layer.name)?,
                Some(Some((x, y))) => write!(f, "neuron({}:{channel}, {x}, {y})", layer.name)?,
            },
            Objective::Add(a, b) => {
                a.fmt_prec(f, 1)?;
                write!(f, " + ")?;
                b.fmt_prec(f, 2)?;
            }
            Objective::Sub(a, b) => {
                a.fmt_prec(f, 1)?;
                write!(f, " - ")?;
                b.fmt_prec(f, 2)?;
            }
            Objective::Mul(a, b) => {
                a.fmt_prec(f, 2)?;
                write!(f, " * ")?;
                b.fmt_prec(f, 3)?;
            }
            Objective::Neg(a) => {
                write!(f, "-")?;
                a.fmt_prec(f, 3)?;
            }
        }
        if paren {
            write!(f, ")")?;
        }
        Ok(())
    }
}

/// The objective in the grammar's own syntax: parsing it gives the same objective back.
impl fmt::Display for Objective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_prec(f, 0)
    }
}

fn neuron_offset(t: &Tensor, at: Option<(usize, usize)>) -> Result<usize, RenderError> {
    let s = t.shape();
    if s.len() != 4 {
        return match at {
            None => Ok(0),
            Some(_) => Err(RenderError::Invalid(
                "neuron(…, x, y) needs a layer with spatial positions".into(),
            )),
        };
    }
    let (h, w) = (s[2], s[3]);
    let (x, y) = at.unwrap_or((w / 2, h / 2));
    if x >= w || y >= h {
        return Err(RenderError::Invalid(format!(
            "neuron position ({x}, {y}) is outside the layer's {w}×{h} positions at this image size"
        )));
    }
    Ok(y * w + x)
}

/// The offset within a channel plane of column x, row y of a `[N, C, H, W]` layer output.
fn position_offset(
    t: &Tensor,
    layer: &Layer,
    (x, y): (usize, usize),
    what: &str,
) -> Result<usize, RenderError> {
    let s = t.shape();
    if s.len() != 4 {
        return Err(RenderError::Invalid(format!(
            "{what}({}, …, {x}, {y}) needs a layer with spatial positions; its output is {s:?}",
            layer.name
        )));
    }
    let (h, w) = (s[2], s[3]);
    if x >= w || y >= h {
        return Err(RenderError::Invalid(format!(
            "{what}({}, …, {x}, {y}): the position is outside the layer's {w}×{h} (W×H) positions at this image size",
            layer.name
        )));
    }
    Ok(y * w + x)
}

impl Add for Objective {
    type Output = Objective;
    fn add(self, rhs: Objective) -> Objective {
        Objective::Add(Box::new(self), Box::new(rhs))
    }
}

impl Sub for Objective {
    type Output = Objective;
    fn sub(self, rhs: Objective) -> Objective {
        Objective::Sub(Box::new(self), Box::new(rhs))
    }
}

impl Mul for Objective {
    type Output = Objective;
    fn mul(self, rhs: Objective) -> Objective {
        Objective::Mul(Box::new(self), Box::new(rhs))
    }
}

impl Mul<Objective> for f32 {
    type Output = Objective;
    fn mul(self, rhs: Objective) -> Objective {
        Objective::Mul(Box::new(Objective::Const(self)), Box::new(rhs))
    }
}

impl Neg for Objective {
    type Output = Objective;
    fn neg(self) -> Objective {
        Objective::Neg(Box::new(self))
    }
}

/// Gram matrices of each image's activations, normalized to unit Frobenius norm.
struct Diversity {
    n: usize,
    c: usize,
    plane: usize,
    /// `[N, C, C]`, each normalized.
    unit: Vec<f32>,
    norms: Vec<f32>,
    /// cos[i * n + j]
    cos: Vec<f32>,
}

impl Diversity {
    fn new(t: &Tensor) -> Diversity {
        let (n, c, plane) = dims(t);
        let mut unit = vec![0.0f32; n * c * c];
        let mut norms = vec![0.0f32; n];
        for b in 0..n {
            let a = &t.data()[b * c * plane..(b + 1) * c * plane];
            let g = &mut unit[b * c * c..(b + 1) * c * c];
            for i in 0..c {
                let ai = &a[i * plane..(i + 1) * plane];
                for j in i..c {
                    let aj = &a[j * plane..(j + 1) * plane];
                    let s: f32 = ai.iter().zip(aj).map(|(x, y)| x * y).sum();
                    g[i * c + j] = s;
                    g[j * c + i] = s;
                }
            }
            let norm = g.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt() as f32;
            norms[b] = norm;
            let inv = 1.0 / norm.max(1e-10);
            g.iter_mut().for_each(|x| *x *= inv);
        }
        let mut cos = vec![0.0f32; n * n];
        let cc = c * c;
        for i in 0..n {
            for j in i + 1..n {
                let s: f32 = unit[i * cc..(i + 1) * cc]
                    .iter()
                    .zip(&unit[j * cc..(j + 1) * cc])
                    .map(|(x, y)| x * y)
                    .sum();
                cos[i * n + j] = s;
                cos[j * n + i] = s;
            }
        }
        Diversity {
            n,
            c,
            plane,
            unit,
            norms,
            cos,
        }
    }

    /// −(1/(n−1)) Σ_{j≠i} cos(G_i, G_j); 0 for a batch of one.
    fn value(&self, i: usize) -> f32 {
        if self.n < 2 {
            return 0.0;
        }
        let s: f32 = (0..self.n)
            .filter(|&j| j != i)
            .map(|j| self.cos[i * self.n + j])
            .sum();
        -s / (self.n - 1) as f32
    }

    /// Adds the gradient of Σ_i w[i] · value(i) with respect to the activations.
    fn accumulate_grad(&self, t: &Tensor, w: &[f32], g: &mut Tensor) {
        let (n, c, plane) = (self.n, self.c, self.plane);
        if n < 2 {
            return;
        }
        let cc = c * c;
        let mut dg = vec![0.0f32; cc];
        let mut tmp = vec![0.0f32; plane];
        for i in 0..n {
            // d/dG_i of Σ_pairs weight_ij · cos_ij, weight_ij = −(w_i + w_j)/(n−1).
            dg.iter_mut().for_each(|x| *x = 0.0);
            let inv_norm = 1.0 / self.norms[i].max(1e-10);
            let ui = &self.unit[i * cc..(i + 1) * cc];
            for j in 0..n {
                if j == i {
                    continue;
                }
                let wij = -(w[i] + w[j]) / (n - 1) as f32;
                if wij == 0.0 {
                    continue;
                }
                let cij = self.cos[i * n + j];
                let uj = &self.unit[j * cc..(j + 1) * cc];
                for ((d, a), b) in dg.iter_mut().zip(uj).zip(ui) {
                    *d += wij * inv_norm * (a - cij * b);
                }
            }
            // G = A Aᵀ with dG symmetric: dA = 2 dG A.
            let a = &t.data()[i * c * plane..(i + 1) * c * plane];
            let ga = &mut g.data_mut()[i * c * plane..(i + 1) * c * plane];
            for r in 0..c {
                tmp.iter_mut().for_each(|x| *x = 0.0);
                for k in 0..c {
                    let coef = 2.0 * dg[r * c + k];
                    if coef == 0.0 {
                        continue;
                    }
                    for (o, x) in tmp.iter_mut().zip(&a[k * plane..(k + 1) * plane]) {
                        *o += coef * x;
                    }
                }
                for (o, x) in ga[r * plane..(r + 1) * plane].iter_mut().zip(&tmp) {
                    *o += x;
                }
            }
        }
    }
}

/// What part of the network an objective reads (see `Objective::channels_read`).
enum Reads {
    Nothing,
    Channels(NodeId, Vec<usize>),
}

impl Reads {
    fn union(a: Reads, b: Reads) -> Option<Reads> {
        match (a, b) {
            (Reads::Nothing, r) | (r, Reads::Nothing) => Some(r),
            (Reads::Channels(n, mut a), Reads::Channels(m, b)) if n == m => {
                a.extend(b);
                a.sort_unstable();
                a.dedup();
                Some(Reads::Channels(n, a))
            }
            _ => None,
        }
    }
}

/// The objective of each image of a batch: one for all, or one per image.
#[derive(Clone, Debug)]
pub enum BatchObjective {
    Shared(Objective),
    PerImage(Vec<Objective>),
}

impl BatchObjective {
    pub fn nodes(&self) -> Vec<NodeId> {
        let mut out = match self {
            BatchObjective::Shared(o) => o.nodes(),
            BatchObjective::PerImage(v) => v.iter().flat_map(|o| o.nodes()).collect(),
        };
        out.sort_unstable();
        out.dedup();
        out
    }

    /// See [`Objective::channels_read`]; for per-image objectives, the union over the images
    /// (all must read the same node).
    pub fn channels_read(&self) -> Option<(NodeId, Vec<usize>)> {
        let reads = match self {
            BatchObjective::Shared(o) => o.reads()?,
            BatchObjective::PerImage(v) => v
                .iter()
                .try_fold(Reads::Nothing, |acc, o| Reads::union(acc, o.reads()?))?,
        };
        match reads {
            Reads::Nothing => None,
            Reads::Channels(node, ch) => Some((node, ch)),
        }
    }

    /// Traces `x` (normalized network input) for this objective, computing only the channels it
    /// reads where it reads only some.
    pub fn trace(&self, graph: &Graph, x: Tensor) -> Result<Trace, RenderError> {
        let (nodes, channels) = self.targets();
        Ok(match channels {
            Some(ch) => graph.forward_channels(x, &nodes, &ch)?,
            None => graph.forward_multi(x, &nodes)?,
        })
    }

    /// [`BatchObjective::trace`] for evaluating only (no gradient): nothing is kept for a
    /// backward pass, which spares the max pools' codes and the ReLU masks.
    pub fn trace_values(&self, graph: &Graph, x: Tensor) -> Result<Trace, RenderError> {
        let (nodes, channels) = self.targets();
        Ok(graph.evaluate_targets(x, &nodes, channels.as_deref())?)
    }

    /// The nodes a trace computes, and the channels of the only one where just those are read.
    fn targets(&self) -> (Vec<NodeId>, Option<Vec<usize>>) {
        let nodes = self.nodes();
        let channels = match self.channels_read() {
            Some((node, ch)) if nodes == [node] => Some(ch),
            _ => None,
        };
        (nodes, channels)
    }

    /// The objective of image `b`.
    pub fn of(&self, b: usize) -> &Objective {
        match self {
            BatchObjective::Shared(o) => o,
            BatchObjective::PerImage(v) => &v[b],
        }
    }

    /// Images the objective is for, if it fixes them.
    pub fn image_count(&self) -> Option<usize> {
        match self {
            BatchObjective::Shared(_) => None,
            BatchObjective::PerImage(v) => Some(v.len()),
        }
    }

    /// Per-image values on a traced batch of `n` and, if asked, the gradient of their sum with
    /// respect to the traced nodes (seeds for `Graph::backward_multi`).
    pub fn evaluate(
        &self,
        trace: &Trace,
        n: usize,
        with_grad: bool,
    ) -> Result<(Vec<f32>, Option<NodeGrads>), RenderError> {
        let ones = vec![1.0f32; n];
        match self {
            BatchObjective::Shared(o) => {
                let values = o.values(trace, n, None)?;
                let grads = if with_grad {
                    let mut g = NodeGrads::default();
                    o.accumulate_grad(trace, n, None, &ones, &mut g)?;
                    Some(g)
                } else {
                    None
                };
                Ok((values, grads))
            }
            BatchObjective::PerImage(list) => {
                if list.len() != n {
                    return Err(RenderError::Invalid(format!(
                        "{} objectives for a batch of {n} images",
                        list.len()
                    )));
                }
                let mut values = vec![0.0f32; n];
                let mut g = NodeGrads::default();
                for (b, o) in list.iter().enumerate() {
                    values[b] = o.values(trace, n, Some(b))?[b];
                    if with_grad {
                        o.accumulate_grad(trace, n, Some(b), &ones, &mut g)?;
                    }
                }
                Ok((values, with_grad.then_some(g)))
            }
        }
    }
}

impl fmt::Display for BatchObjective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchObjective::Shared(o) => write!(f, "{o}"),
            BatchObjective::PerImage(v) => {
                for (i, o) in v.iter().enumerate() {
                    if i > 0 {
                        write!(f, "; ")?;
                    }
                    write!(f, "{o}")?;
                }
                Ok(())
            }
        }
    }
}
