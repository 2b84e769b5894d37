//! Client certificates: what a TLS client's certificate says of it (its subject, its DNS and
//! URI names), and what a service's `certificate` block requires of one.
//!
//! Pure. The TLS layer verifies a certificate against `server.tls.client_ca_file` before
//! anything here reads it: a [`ClientCertificate`] is only ever made from a chain the server
//! trusts. Subjects are compared in one written form ([`canonical_subject`]) so that the order
//! of the attributes and the spaces between them cannot make two equal names differ, nor an
//! attribute's value pass for another attribute.

use std::fmt;

use x509_parser::extensions::GeneralName;
use x509_parser::objects::{oid2abbrev, oid_registry};

/// What a verified client certificate says of its holder.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientCertificate {
    /// The subject in [`canonical_subject`] form: `CN=runner-prod,O=acme`.
    pub subject: String,
    /// The DNS names of its subject alternative names, in lower case.
    pub dns: Vec<String>,
    /// The URIs of its subject alternative names (`spiffe://acme/runner-prod`).
    pub uris: Vec<String>,
}

impl ClientCertificate {
    /// Reads the end-entity certificate `der` (already verified by the TLS layer).
    pub fn from_der(der: &[u8]) -> Result<ClientCertificate, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("the client certificate cannot be read: {e}"))?;
        let mut attributes = Vec::new();
        for attribute in cert.subject().iter_attributes() {
            let oid = attribute.attr_type();
            let key =
                oid2abbrev(oid, oid_registry()).map_or_else(|_| oid.to_id_string(), str::to_string);
            let value = attribute
                .as_str()
                .map_err(|e| format!("the client certificate's subject {key} is not text: {e}"))?;
            attributes.push((key, value.to_string()));
        }
        let mut dns = Vec::new();
        let mut uris = Vec::new();
        let names = cert
            .subject_alternative_name()
            .map_err(|e| format!("the client certificate's alternative names: {e}"))?;
        for name in names.iter().flat_map(|n| &n.value.general_names) {
            match name {
                GeneralName::DNSName(n) => dns.push(n.to_ascii_lowercase()),
                GeneralName::URI(u) => uris.push(u.to_string()),
                _ => {}
            }
        }
        Ok(ClientCertificate {
            subject: render(attributes),
            dns,
            uris,
        })
    }
}

impl fmt::Display for ClientCertificate {
    /// The subject, and the alternative names when it has any: what the audit record keeps.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.subject)?;
        let names: Vec<String> = (self.dns.iter().map(|d| format!("DNS:{d}")))
            .chain(self.uris.iter().map(|u| format!("URI:{u}")))
            .collect();
        if !names.is_empty() {
            write!(f, " ({})", names.join(", "))?;
        }
        Ok(())
    }
}

/// What a service's `certificate` block requires of the certificate its requests come with.
/// The policies compare it with the certificate presented (see `policy`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// This subject, in [`canonical_subject`] form.
    Subject(String),
    /// This DNS name among its alternative names, in lower case.
    Dns(String),
    /// This URI among its alternative names.
    Uri(String),
}

impl Requirement {
    /// A DNS name required, compared without regard to case as DNS names are.
    pub fn dns(name: &str) -> Requirement {
        Requirement::Dns(name.to_ascii_lowercase())
    }

    /// A certificate that meets it and says nothing more: what `policy explain` and `policy
    /// matrix` assume a service's requests come with.
    pub fn met(&self) -> ClientCertificate {
        let mut cert = ClientCertificate {
            subject: String::new(),
            dns: Vec::new(),
            uris: Vec::new(),
        };
        match self {
            Requirement::Subject(s) => cert.subject = s.clone(),
            Requirement::Dns(d) => cert.dns.push(d.clone()),
            Requirement::Uri(u) => cert.uris.push(u.clone()),
        }
        cert
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Requirement::Subject(s) => write!(f, "subject {s}"),
            Requirement::Dns(d) => write!(f, "DNS name {d}"),
            Requirement::Uri(u) => write!(f, "URI {u}"),
        }
    }
}

/// A subject as written in a config (`CN=runner-prod, O=acme`) in its one comparable form:
/// attribute names in capitals, sorted, joined by `,` without spaces. Refused when it is not
/// a list of `NAME=value`, or uses what this form does not read (escapes, multi-valued names).
pub fn canonical_subject(text: &str) -> Result<String, String> {
    if text.contains(['\\', '+', '"']) {
        return Err(format!(
            "subject \"{text}\" uses escapes, quotes or `+`, which are not read here: name the certificate by a DNS name or URI of its alternative names instead"
        ));
    }
    let mut attributes = Vec::new();
    for part in text.split(',') {
        let attribute = part
            .split_once('=')
            .map(|(key, value)| (key.trim(), value.trim()))
            .filter(|(key, value)| {
                !key.is_empty()
                    && !value.is_empty()
                    && key.chars().all(|c| c.is_ascii_alphanumeric())
            });
        let Some((key, value)) = attribute else {
            return Err(format!(
                "subject \"{text}\": `{}` is not NAME=value; write e.g. \"CN=runner-prod,O=acme\"",
                part.trim()
            ));
        };
        attributes.push((key.to_string(), value.to_string()));
    }
    Ok(render(attributes))
}

/// Attributes in the canonical form; a value's `,`, `=`, `+` and `\` escaped, so that no value can
/// read as more attributes.
fn render(mut attributes: Vec<(String, String)>) -> String {
    for (key, _) in &mut attributes {
        *key = key.to_ascii_uppercase();
    }
    attributes.sort();
    attributes
        .iter()
        .map(|(key, value)| {
            let mut escaped = String::with_capacity(value.len());
            for c in value.chars() {
                if matches!(c, ',' | '=' | '\\' | '+') {
                    escaped.push('\\');
                }
                escaped.push(c);
            }
            format!("{key}={escaped}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(subject: &str) -> ClientCertificate {
        ClientCertificate {
            subject: subject.into(),
            dns: vec!["runner.acme.internal".into()],
            uris: vec!["spiffe://acme/runner-prod".into()],
        }
    }

    #[test]
    fn subjects_compare_whatever_the_order_spaces_and_case_of_names() {
        let a = canonical_subject("CN=runner-prod,O=acme").unwrap();
        assert_eq!(a, "CN=runner-prod,O=acme");
        assert_eq!(canonical_subject("o = acme, cn=runner-prod").unwrap(), a);
        // Values keep their case: CN=Runner-Prod is another name.
        assert_ne!(canonical_subject("CN=Runner-Prod,O=acme").unwrap(), a);
    }

    #[test]
    fn a_value_cannot_pass_for_another_attribute() {
        // A certificate whose CN is `runner-prod,O=acme` is not CN=runner-prod,O=acme.
        let rendered = render(vec![("CN".into(), "runner-prod,O=acme".into())]);
        assert_eq!(rendered, "CN=runner-prod\\,O\\=acme");
        assert_ne!(
            rendered,
            canonical_subject("CN=runner-prod,O=acme").unwrap()
        );
    }

    #[test]
    fn subjects_that_cannot_be_read_are_refused_with_what_to_write() {
        for bad in [
            "runner-prod",
            "CN=",
            "=acme",
            "CN=a\\,b",
            "CN=a+OU=b",
            "C N=x",
        ] {
            let e = canonical_subject(bad).unwrap_err();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn a_certificate_reads_as_its_subject_and_alternative_names() {
        assert_eq!(
            cert("CN=x").to_string(),
            "CN=x (DNS:runner.acme.internal, URI:spiffe://acme/runner-prod)"
        );
        assert_eq!(
            Requirement::dns("Runner.ACME.internal").to_string(),
            "DNS name runner.acme.internal"
        );
    }

    #[test]
    fn a_certificate_is_read_for_its_subject_and_alternative_names() {
        let mut params =
            rcgen::CertificateParams::new(vec!["Runner.acme.internal".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "acme");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "runner-prod");
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://acme/runner-prod".try_into().unwrap(),
        ));
        let key = rcgen::KeyPair::generate().unwrap();
        let der = params.self_signed(&key).unwrap();
        let read = ClientCertificate::from_der(der.der()).unwrap();
        assert_eq!(read.subject, "CN=runner-prod,O=acme");
        assert_eq!(read.dns, ["runner.acme.internal"]);
        assert_eq!(read.uris, ["spiffe://acme/runner-prod"]);
        assert!(ClientCertificate::from_der(b"not a certificate").is_err());
    }
}
