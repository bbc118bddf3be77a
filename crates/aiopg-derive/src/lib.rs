//! `#[derive(FromRow)]` for [aiopg](https://docs.rs/aiopg): builds a struct out of a query's
//! row.
//!
//! Use it through the `aiopg` crate (its `derive` feature, on by default), which re-exports the
//! macro next to the `FromRow` trait it implements: `use aiopg::FromRow;` brings both. The
//! generated code names the trait and its helpers through `::aiopg` (or the path given by
//! `#[aiopg(crate = "...")]`), so this crate is not meant to be a direct dependency.
//!
//! A struct with named fields reads each field from the column of the same name; a tuple struct
//! reads its fields by position. See [`FromRow`](derive@FromRow) for the attributes.
#![forbid(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms)]

use proc_macro2::{Literal, Span, TokenStream, TokenTree};
use quote::{quote, quote_spanned, ToTokens};
use syn::ext::IdentExt;
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{Attribute, Data, DeriveInput, Fields, GenericParam, Ident, LitStr, Path, Token, Type};

/// Derives `aiopg::FromRow`, which builds the struct out of a whole `aiopg::Row`.
///
/// - A struct with named fields reads each field by column name, with
///   `row.try_get::<FieldType>("field_name")` (an exact match first, then one ignoring ASCII
///   case). Columns no field asks for are ignored.
/// - A tuple struct reads its fields by position, and the row must have exactly as many
///   columns as the struct has fields.
///
/// Reading never panics: a missing column, a value of the wrong type or a NULL read into a
/// non-`Option` field is an `aiopg::Error` naming the field, the column and the types.
///
/// # Field attributes
///
/// | attribute | effect |
/// |---|---|
/// | `#[aiopg(rename = "col")]` | read column `col` instead of the field's name |
/// | `#[aiopg(default)]` | when the row has no such column, use `Default::default()` (a NULL is still an error unless the field is an `Option`) |
/// | `#[aiopg(try_from = "i64")]` | read the column as an `i64`, then convert with `TryFrom<i64>` (a failed conversion is a decode error naming the field, never a panic) |
/// | `#[aiopg(flatten)]` | build the field, whose type implements `FromRow`, from the same row |
/// | `#[aiopg(skip)]` | read nothing: the field is `Default::default()` |
///
/// `rename`, `default` and `try_from` combine; `flatten` and `skip` stand alone. Tuple struct
/// fields take no attributes.
///
/// # Container attributes
///
/// - `#[aiopg(rename_all = "camelCase")]` reads each field (without a `rename` of its own)
///   from its name in that case: `lowercase`, `UPPERCASE`, `snake_case`,
///   `SCREAMING_SNAKE_CASE`, `kebab-case`, `camelCase` or `PascalCase` (`created_at` becomes
///   `createdAt`).
/// - `#[aiopg(crate = "path::to::aiopg")]` names the `aiopg` crate for the generated code,
///   for a crate that reaches aiopg through a re-export. The default is `::aiopg`.
///
/// Structs with lifetime parameters are not supported (rows decode into owned values);
/// type parameters are, with the bounds their fields need added to the implementation.
///
/// # Example
///
/// ```no_run
/// use aiopg::FromRow;
///
/// #[derive(Debug, FromRow)]
/// struct Address {
///     city: String,
///     #[aiopg(rename = "zip_code")]
///     zip: Option<String>,
/// }
///
/// #[derive(Debug, FromRow)]
/// struct User {
///     id: i32,
///     #[aiopg(rename = "full_name")]
///     name: String,
///     /// Queries that do not select `tags` leave it empty.
///     #[aiopg(default)]
///     tags: Vec<String>,
///     /// `city` and `zip_code` come from the same row.
///     #[aiopg(flatten)]
///     address: Address,
///     #[aiopg(skip)]
///     cached_greeting: Option<String>,
/// }
///
/// /// `(id, total)` by position.
/// #[derive(Debug, FromRow)]
/// struct Total(i32, i64);
///
/// # async fn f() -> aiopg::Result<()> {
/// let conn = aiopg::connect("dbname=app").await?;
/// let rows = conn
///     .query("SELECT id, full_name, city, zip_code FROM users WHERE id = $1", &[&7i32])
///     .await?;
/// for row in &rows {
///     let user = User::from_row(row)?;
///     println!("{} lives in {}", user.name, user.address.city);
/// }
/// let rows = conn.query("SELECT user_id, sum(amount) FROM orders GROUP BY 1", &[]).await?;
/// let totals = rows.iter().map(Total::from_row).collect::<aiopg::Result<Vec<_>>>()?;
/// # Ok(()) }
/// ```
#[proc_macro_derive(FromRow, attributes(aiopg))]
pub fn derive_from_row(input: proc_macro::TokenStream) -> proc_macro::TokenStream {
    let input = syn::parse_macro_input!(input as DeriveInput);
    expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Errors gathered so that one compilation reports them all.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

const OWNED: &str = "a FromRow field owns its value: rows are read into owned types \
                     (String rather than &str, Vec<u8> rather than &[u8])";

const FIELD_ATTRIBUTES: &str =
    "`rename = \"...\"`, `default`, `try_from = \"Type\"`, `flatten` or `skip`";

/// The cases `#[aiopg(rename_all = "...")]` accepts, turning a snake_case field name into the
/// column name.
const CASES: [&str; 7] = [
    "lowercase",
    "UPPERCASE",
    "snake_case",
    "SCREAMING_SNAKE_CASE",
    "kebab-case",
    "camelCase",
    "PascalCase",
];

/// `field` (a Rust field name, snake_case) in `case`, one of [`CASES`].
fn rename_case(field: &str, case: &str) -> String {
    let words = field.split('_').filter(|w| !w.is_empty());
    let capitalised = |w: &str| {
        let mut c = w.chars();
        c.next()
            .map(|f| {
                f.to_uppercase()
                    .chain(c.flat_map(char::to_lowercase))
                    .collect()
            })
            .unwrap_or_default()
    };
    match case {
        "lowercase" => field.to_lowercase(),
        "UPPERCASE" => field.to_uppercase(),
        "snake_case" => field.to_owned(),
        "SCREAMING_SNAKE_CASE" => field.to_uppercase(),
        "kebab-case" => words.collect::<Vec<_>>().join("-"),
        "camelCase" => words
            .enumerate()
            .map(|(i, w)| {
                if i == 0 {
                    w.to_lowercase()
                } else {
                    capitalised(w)
                }
            })
            .collect::<Vec<String>>()
            .concat(),
        "PascalCase" => words.map(capitalised).collect::<Vec<String>>().concat(),
        _ => unreachable!("rename_all is checked against CASES"),
    }
}

fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let mut errors = Errors::default();
    let (krate, rename_all) = container_attributes(&input.attrs, &mut errors);

    let fields = match &input.data {
        Data::Struct(s) => &s.fields,
        Data::Enum(e) => {
            return Err(syn::Error::new(
                e.enum_token.span,
                "FromRow can only be derived for structs, not enums",
            ))
        }
        Data::Union(u) => {
            return Err(syn::Error::new(
                u.union_token.span,
                "FromRow can only be derived for structs, not unions",
            ))
        }
    };
    for param in &input.generics.params {
        if let GenericParam::Lifetime(l) = param {
            errors.push(syn::Error::new_spanned(
                l,
                "FromRow cannot be derived for a struct with lifetime parameters: rows decode \
                 into owned values (String rather than &str, Vec<u8> rather than &[u8])",
            ));
        }
    }

    let name = &input.ident;
    let name_str = name.unraw().to_string();
    let p = quote!(#krate::__private);
    let type_params: Vec<&Ident> = input.generics.type_params().map(|t| &t.ident).collect();
    let mut bounds: Vec<TokenStream> = Vec::new();
    let mut bound = |ty: &Type, traits: TokenStream| {
        if mentions_any(ty.to_token_stream(), &type_params) {
            bounds.push(quote!(#ty: #traits));
        }
    };

    let body = match fields {
        Fields::Named(named) => {
            let mut inits = Vec::with_capacity(named.named.len());
            for field in &named.named {
                let attrs = field_attributes(&field.attrs, &mut errors);
                let ident = field.ident.as_ref().expect("named fields have names");
                let ty = &field.ty;
                let field_str = ident.unraw().to_string();
                let fail = |read: TokenStream| {
                    quote_spanned! {ty.span()=>
                        match #read {
                            ::core::result::Result::Ok(__v) => __v,
                            ::core::result::Result::Err(__e) => {
                                return ::core::result::Result::Err(
                                    #p::field_error(__e, #name_str, #field_str),
                                )
                            }
                        }
                    }
                };
                let value = match attrs {
                    Kind::Skip => {
                        bound(ty, quote!(::core::default::Default));
                        quote_spanned!(ty.span()=> ::core::default::Default::default())
                    }
                    Kind::Flatten => {
                        bound(ty, quote!(#p::FromRow));
                        fail(quote_spanned!(ty.span()=> <#ty as #p::FromRow>::from_row(__row)))
                    }
                    Kind::Column { .. } if matches!(ty, Type::Reference(_)) => {
                        errors.push(syn::Error::new_spanned(ty, OWNED));
                        continue;
                    }
                    Kind::Column {
                        rename,
                        default,
                        try_from,
                    } => {
                        let column = match (rename, &rename_all) {
                            (Some(lit), _) => lit,
                            (None, Some(case)) => {
                                LitStr::new(&rename_case(&field_str, case), ident.span())
                            }
                            (None, None) => LitStr::new(&field_str, ident.span()),
                        };
                        let read = match try_from {
                            None => {
                                bound(ty, quote!(#p::FromSqlOwned));
                                fail(quote_spanned!(ty.span()=> __row.try_get::<#ty>(#column)))
                            }
                            Some(src) => {
                                bound(&src, quote!(#p::FromSqlOwned));
                                bound(ty, quote!(::core::convert::TryFrom<#src>));
                                let src_str = src.to_token_stream().to_string().replace(' ', "");
                                let ty_str = ty.to_token_stream().to_string().replace(' ', "");
                                fail(quote_spanned! {ty.span()=>
                                    __row.try_get::<#src>(#column).and_then(|__v| {
                                        <#ty as ::core::convert::TryFrom<#src>>::try_from(__v)
                                            .map_err(|_| #p::try_from_failed(#src_str, #ty_str))
                                    })
                                })
                            }
                        };
                        if default {
                            bound(ty, quote!(::core::default::Default));
                            quote_spanned! {ty.span()=>
                                if #p::has_column(__row, #column) {
                                    #read
                                } else {
                                    ::core::default::Default::default()
                                }
                            }
                        } else {
                            read
                        }
                    }
                };
                inits.push(quote!(#ident: #value));
            }
            quote!(::core::result::Result::Ok(Self { #(#inits,)* }))
        }
        Fields::Unnamed(unnamed) => {
            let count = unnamed.unnamed.len();
            let mut values = Vec::with_capacity(count);
            for (i, field) in unnamed.unnamed.iter().enumerate() {
                for attr in field.attrs.iter().filter(|a| a.path().is_ident("aiopg")) {
                    errors.push(syn::Error::new_spanned(
                        attr,
                        "tuple struct fields take no aiopg attributes: they read columns by \
                         position (use a struct with named fields to rename, default, flatten \
                         or skip)",
                    ));
                }
                let ty = &field.ty;
                if matches!(ty, Type::Reference(_)) {
                    errors.push(syn::Error::new_spanned(ty, OWNED));
                }
                bound(ty, quote!(#p::FromSqlOwned));
                let index = Literal::usize_suffixed(i);
                let field_str = i.to_string();
                values.push(quote_spanned! {ty.span()=>
                    match __row.try_get::<#ty>(#index) {
                        ::core::result::Result::Ok(__v) => __v,
                        ::core::result::Result::Err(__e) => {
                            return ::core::result::Result::Err(
                                #p::field_error(__e, #name_str, #field_str),
                            )
                        }
                    }
                });
            }
            quote! {
                #p::check_column_count(__row, #count, #name_str)?;
                ::core::result::Result::Ok(Self(#(#values,)*))
            }
        }
        Fields::Unit => {
            return Err(syn::Error::new_spanned(
                input,
                "FromRow cannot be derived for a unit struct: give it the fields to read, \
                 named (read by column name) or positional (read by column position)",
            ))
        }
    };
    errors.finish()?;

    let mut generics = input.generics.clone();
    if !bounds.is_empty() {
        generics.make_where_clause().predicates.extend(
            bounds
                .iter()
                .map(|b| syn::parse2::<syn::WherePredicate>(b.clone()))
                .collect::<syn::Result<Vec<_>>>()?,
        );
    }
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    Ok(quote! {
        #[automatically_derived]
        impl #impl_generics #p::FromRow for #name #ty_generics #where_clause {
            fn from_row(__row: &#p::Row) -> #p::Result<Self> {
                #body
            }
        }
    })
}

/// True when `tokens` name one of `params` (a field type that mentions a type parameter).
fn mentions_any(tokens: TokenStream, params: &[&Ident]) -> bool {
    !params.is_empty()
        && tokens.into_iter().any(|tt| match tt {
            TokenTree::Ident(i) => params.iter().any(|p| **p == i),
            TokenTree::Group(g) => mentions_any(g.stream(), params),
            _ => false,
        })
}

/// The crate path from `#[aiopg(crate = "...")]`, else `::aiopg`; the case of
/// `#[aiopg(rename_all = "...")]`.
fn container_attributes(attrs: &[Attribute], errors: &mut Errors) -> (TokenStream, Option<String>) {
    let mut krate: Option<Path> = None;
    let mut rename_all: Option<String> = None;
    for attr in attrs.iter().filter(|a| a.path().is_ident("aiopg")) {
        let parsed = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("crate") {
                let lit: LitStr = meta.value()?.parse()?;
                let path: Path = lit.parse()?;
                if krate.replace(path).is_some() {
                    return Err(meta.error("duplicate `crate` attribute"));
                }
                Ok(())
            } else if meta.path.is_ident("rename_all") {
                let lit: LitStr = meta.value()?.parse()?;
                let case = lit.value();
                if !CASES.contains(&case.as_str()) {
                    return Err(syn::Error::new(
                        lit.span(),
                        format!(
                            "unknown case `{case}` for rename_all: expected one of {}",
                            CASES.join(", ")
                        ),
                    ));
                }
                if rename_all.replace(case).is_some() {
                    return Err(meta.error("duplicate `rename_all` attribute"));
                }
                Ok(())
            } else if ["rename", "default", "flatten", "skip", "try_from"]
                .iter()
                .any(|f| meta.path.is_ident(f))
            {
                Err(meta.error(format!(
                    "`{}` is a field attribute: put it on a field, not on the struct",
                    path_str(&meta)
                )))
            } else {
                Err(meta.error(format!(
                    "unknown aiopg attribute `{}` on the struct: the struct takes \
                     `crate = \"path::to::aiopg\"` and `rename_all = \"...\"`, its fields take \
                     {FIELD_ATTRIBUTES}",
                    path_str(&meta)
                )))
            }
        });
        if let Err(e) = parsed {
            errors.push(e);
        }
    }
    let krate = match krate {
        Some(path) => path.into_token_stream(),
        None => quote!(::aiopg),
    };
    (krate, rename_all)
}

/// Where a named field's value comes from.
enum Kind {
    Column {
        rename: Option<LitStr>,
        default: bool,
        /// Read the column as this type, then convert with `TryFrom`.
        try_from: Option<Box<Type>>,
    },
    Flatten,
    Skip,
}

#[derive(Default)]
struct FieldAttrs {
    rename: Option<LitStr>,
    try_from: Option<Type>,
    default: Option<Span>,
    flatten: Option<Span>,
    skip: Option<Span>,
}

fn path_str(meta: &ParseNestedMeta<'_>) -> String {
    meta.path
        .to_token_stream()
        .to_string()
        .replace(char::is_whitespace, "")
}

/// Sets a flag attribute (`default`, `flatten`, `skip`), which takes no value.
fn flag(meta: &ParseNestedMeta<'_>, slot: &mut Option<Span>, name: &str) -> syn::Result<()> {
    if !meta.input.is_empty() && !meta.input.peek(Token![,]) {
        return Err(meta.error(format!("`{name}` takes no value: write `#[aiopg({name})]`")));
    }
    if slot.replace(meta.path.span()).is_some() {
        return Err(meta.error(format!("duplicate `{name}` attribute")));
    }
    Ok(())
}

fn field_attributes(attrs: &[Attribute], errors: &mut Errors) -> Kind {
    let mut a = FieldAttrs::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("aiopg")) {
        let parsed = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("rename") {
                let lit: LitStr = meta.value()?.parse()?;
                if lit.value().is_empty() {
                    return Err(syn::Error::new(lit.span(), "a column name cannot be empty"));
                }
                if a.rename.replace(lit).is_some() {
                    return Err(meta.error("duplicate `rename` attribute"));
                }
                Ok(())
            } else if meta.path.is_ident("try_from") {
                let lit: LitStr = meta.value()?.parse()?;
                let ty: Type = lit.parse()?;
                if a.try_from.replace(ty).is_some() {
                    return Err(meta.error("duplicate `try_from` attribute"));
                }
                Ok(())
            } else if meta.path.is_ident("default") {
                flag(&meta, &mut a.default, "default")
            } else if meta.path.is_ident("flatten") {
                flag(&meta, &mut a.flatten, "flatten")
            } else if meta.path.is_ident("skip") {
                flag(&meta, &mut a.skip, "skip")
            } else if meta.path.is_ident("crate") || meta.path.is_ident("rename_all") {
                Err(meta.error(format!(
                    "`{}` is a struct attribute: put it on the struct, not a field",
                    path_str(&meta)
                )))
            } else {
                Err(meta.error(format!(
                    "unknown aiopg field attribute `{}`: expected {FIELD_ATTRIBUTES}",
                    path_str(&meta)
                )))
            }
        });
        if let Err(e) = parsed {
            errors.push(e);
        }
    }

    if let Some(skip) = a.skip {
        let others = [
            ("rename", a.rename.as_ref().map(LitStr::span)),
            ("default", a.default),
            ("flatten", a.flatten),
            ("try_from", a.try_from.as_ref().map(Spanned::span)),
        ];
        for (name, _) in others.iter().filter(|(_, s)| s.is_some()) {
            errors.push(syn::Error::new(
                skip,
                format!("`skip` reads no column, so `{name}` does not apply with it"),
            ));
        }
        return Kind::Skip;
    }
    if let Some(flatten) = a.flatten {
        if a.rename.is_some() {
            errors.push(syn::Error::new(
                flatten,
                "a flattened field reads its own fields' columns: `rename` does not apply \
                 (rename the inner struct's fields instead)",
            ));
        }
        if a.default.is_some() {
            errors.push(syn::Error::new(
                flatten,
                "`default` does not combine with `flatten`: put `default` on the inner \
                 struct's fields instead",
            ));
        }
        if a.try_from.is_some() {
            errors.push(syn::Error::new(
                flatten,
                "`try_from` does not combine with `flatten`: a flattened field is built from \
                 the row, not converted from one column",
            ));
        }
        return Kind::Flatten;
    }
    Kind::Column {
        rename: a.rename,
        default: a.default.is_some(),
        try_from: a.try_from.map(Box::new),
    }
}

/// Misuses that must not compile (cheap compile-fail checks, run as doc tests).
///
/// ```compile_fail
/// #[derive(aiopg::FromRow)]
/// struct Unknown {
///     #[aiopg(renam = "x")]
///     a: i32,
/// }
/// ```
///
/// ```compile_fail
/// #[derive(aiopg::FromRow)]
/// struct Borrowed<'a> {
///     a: &'a str,
/// }
/// ```
///
/// ```compile_fail
/// #[derive(aiopg::FromRow)]
/// struct NotFromSql {
///     a: std::time::Duration,
/// }
/// ```
///
/// ```compile_fail
/// #[derive(aiopg::FromRow)]
/// struct FlattenScalar {
///     #[aiopg(flatten)]
///     a: i32,
/// }
/// ```
///
/// ```compile_fail
/// #[derive(aiopg::FromRow)]
/// enum NotAStruct {
///     A,
/// }
/// ```
///
/// And the baseline those variations break:
///
/// ```
/// #[derive(aiopg::FromRow)]
/// struct Fine {
///     #[aiopg(rename = "x")]
///     a: i32,
/// }
/// ```
#[cfg(doctest)]
mod compile_fail {}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_str(src: &str) -> Result<String, String> {
        let input: DeriveInput = syn::parse_str(src).expect("valid Rust");
        expand(&input).map(|t| t.to_string()).map_err(|e| {
            e.into_iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    #[test]
    fn named_fields_read_by_column() {
        let out = expand_str(
            "struct U { id: i32, #[aiopg(rename = \"full_name\")] name: String, \
             #[aiopg(default)] tags: Vec<String>, #[aiopg(flatten)] a: Addr, \
             #[aiopg(skip)] s: u8, r#type: String }",
        )
        .unwrap();
        assert!(
            out.contains(":: aiopg :: __private :: FromRow for U"),
            "{out}"
        );
        assert!(out.contains("try_get :: < i32 > (\"id\")"), "{out}");
        assert!(out.contains("(\"full_name\")"), "{out}");
        assert!(out.contains("has_column (__row , \"tags\")"), "{out}");
        assert!(
            out.contains("< Addr as :: aiopg :: __private :: FromRow >"),
            "{out}"
        );
        assert!(
            out.contains("(\"type\")"),
            "raw identifiers lose `r#`: {out}"
        );
        assert!(
            !out.contains("where"),
            "no bounds without type parameters: {out}"
        );
    }

    #[test]
    fn rename_all_and_try_from() {
        let out = expand_str(
            "#[aiopg(rename_all = \"camelCase\")] struct U { created_at: i64, \
             #[aiopg(rename = \"ID\")] user_id: i32, #[aiopg(try_from = \"i64\")] n: u32 }",
        )
        .unwrap();
        assert!(out.contains("(\"createdAt\")"), "{out}");
        assert!(
            out.contains("(\"ID\")"),
            "rename wins over rename_all: {out}"
        );
        assert!(out.contains("try_get :: < i64 > (\"n\")"), "{out}");
        assert!(out.contains("TryFrom < i64 >"), "{out}");
        assert!(out.contains("try_from_failed (\"i64\" , \"u32\")"), "{out}");
        let cases = [
            ("lowercase", "ab_cd"),
            ("UPPERCASE", "AB_CD"),
            ("snake_case", "ab_cd"),
            ("SCREAMING_SNAKE_CASE", "AB_CD"),
            ("kebab-case", "ab-cd"),
            ("camelCase", "abCd"),
            ("PascalCase", "AbCd"),
        ];
        for (case, want) in cases {
            assert_eq!(rename_case("ab_cd", case), want, "{case}");
        }
        let err = expand_str("#[aiopg(rename_all = \"Title\")] struct U { a: i32 }").unwrap_err();
        assert!(err.contains("unknown case `Title`"), "{err}");
        let err =
            expand_str("struct U { #[aiopg(rename_all = \"lowercase\")] a: i32 }").unwrap_err();
        assert!(err.contains("`rename_all` is a struct attribute"), "{err}");
        let err =
            expand_str("struct U { #[aiopg(flatten, try_from = \"i64\")] a: A }").unwrap_err();
        assert!(
            err.contains("`try_from` does not combine with `flatten`"),
            "{err}"
        );
    }

    #[test]
    fn crate_path_is_used() {
        let out = expand_str("#[aiopg(crate = \"my::db\")] struct U { id: i32 }").unwrap();
        assert!(out.contains("my :: db :: __private :: FromRow"), "{out}");
        assert!(!out.contains(":: aiopg"), "{out}");
    }

    #[test]
    fn tuple_structs_read_by_position() {
        let out = expand_str("struct P(i32, String);").unwrap();
        assert!(
            out.contains("check_column_count (__row , 2usize , \"P\")"),
            "{out}"
        );
        assert!(out.contains("try_get :: < String > (1usize)"), "{out}");
    }

    #[test]
    fn type_parameters_get_bounds() {
        let out =
            expand_str("struct G<T, I> { a: Option<T>, #[aiopg(flatten)] b: I, c: i32 }").unwrap();
        assert!(
            out.contains("Option < T > : :: aiopg :: __private :: FromSqlOwned"),
            "{out}"
        );
        assert!(
            out.contains("I : :: aiopg :: __private :: FromRow"),
            "{out}"
        );
        assert!(!out.contains("i32 :"), "{out}");
    }

    #[test]
    fn unknown_and_misplaced_attributes_are_errors() {
        let err = expand_str("struct U { #[aiopg(renam = \"x\")] a: i32 }").unwrap_err();
        assert!(
            err.contains("unknown aiopg field attribute `renam`"),
            "{err}"
        );
        let err = expand_str("#[aiopg(flatten)] struct U { a: i32 }").unwrap_err();
        assert!(err.contains("`flatten` is a field attribute"), "{err}");
        let err = expand_str("#[aiopg(krate = \"x\")] struct U { a: i32 }").unwrap_err();
        assert!(err.contains("unknown aiopg attribute `krate`"), "{err}");
        let err = expand_str("struct U { #[aiopg(crate = \"x\")] a: i32 }").unwrap_err();
        assert!(err.contains("`crate` is a struct attribute"), "{err}");
        let err = expand_str("struct U { #[aiopg(default = \"f\")] a: i32 }").unwrap_err();
        assert!(err.contains("`default` takes no value"), "{err}");
        let err = expand_str("struct U { #[aiopg(rename = \"\")] a: i32 }").unwrap_err();
        assert!(err.contains("cannot be empty"), "{err}");
        let err = expand_str("struct P(#[aiopg(default)] i32);").unwrap_err();
        assert!(
            err.contains("tuple struct fields take no aiopg attributes"),
            "{err}"
        );
    }

    #[test]
    fn every_error_is_reported() {
        let err = expand_str(
            "struct U { #[aiopg(bogus)] a: i32, #[aiopg(flatten, rename = \"x\")] b: B, \
             #[aiopg(skip, default)] c: u8, #[aiopg(default, default)] d: u8 }",
        )
        .unwrap_err();
        assert_eq!(err.lines().count(), 4, "{err}");
        assert!(err.contains("`rename` does not apply"), "{err}");
        assert!(
            err.contains("`skip` reads no column, so `default`"),
            "{err}"
        );
        assert!(err.contains("duplicate `default`"), "{err}");
    }

    #[test]
    fn unsupported_shapes_are_errors() {
        let err = expand_str("enum E { A }").unwrap_err();
        assert!(err.contains("not enums"), "{err}");
        let err = expand_str("union X { a: u8 }").unwrap_err();
        assert!(err.contains("not unions"), "{err}");
        let err = expand_str("struct U;").unwrap_err();
        assert!(err.contains("unit struct"), "{err}");
        let err = expand_str("struct U<'a> { a: &'a str }").unwrap_err();
        assert!(err.contains("lifetime parameters"), "{err}");
        let err = expand_str("struct U { a: &'static str }").unwrap_err();
        assert!(err.contains("owns its value"), "{err}");
        let err = expand_str("struct P(&'static [u8]);").unwrap_err();
        assert!(err.contains("owns its value"), "{err}");
    }
}
