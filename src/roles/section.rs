//! A role's section of the topology (`roles.NAME`) as YAML, the way an
//! external role reads it on stdin.

use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::config::RoleSpec;

/// `roles.NAME` as YAML: `exec`, `depends`, `timeout`, `listen` and
/// `config`, each only when the topology has it, in that order.
pub fn section_yaml(spec: &RoleSpec) -> Result<String, String> {
    let listen = spec.listen.as_ref().map(|listen| Pairs {
        pairs: listen
            .iter()
            .map(|(node, port)| (node.value.as_str(), port.as_ref().map(|p| p.value.0)))
            .collect(),
    });
    let out = Out {
        exec: spec
            .exec
            .as_ref()
            .map(|e| e.value.to_string_lossy().into_owned()),
        depends: spec.depends.iter().map(|d| d.value.as_str()).collect(),
        timeout: spec.timeout.as_ref().map(|t| t.value.to_string()),
        listen,
        config: spec.config.as_ref(),
    };
    serde_saphyr::to_string(&out).map_err(|e| format!("cannot write the role's section: {e}"))
}

#[derive(serde::Serialize)]
struct Out<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    exec: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    depends: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<Pairs<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    config: Option<&'a serde_json::Value>,
}

/// A mapping kept in file order.
struct Pairs<'a> {
    pairs: Vec<(&'a str, Option<u16>)>,
}

impl Serialize for Pairs<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.pairs.len()))?;
        for (key, value) in &self.pairs {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Topology;

    use super::*;

    #[test]
    fn a_section_reads_back_as_written() {
        let text = "
cluster: c
replicasets:
  s1:
    roles: [billing, http]
    nodes: { a: { address: 127.0.0.1:3301 }, b: { address: 127.0.0.1:3302 } }
roles:
  http: { listen: { b: 8081, a: null } }
  billing:
    exec: /usr/lib/billing/role
    depends: [http]
    timeout: 1m30s
    config: { currency: EUR, limits: [1, 2], nested: { on: true } }
";
        let t = Topology::parse(text, Path::new("t.yaml")).unwrap();
        let billing = section_yaml(t.roles.get("billing").unwrap()).unwrap();
        let back: serde_json::Value = serde_saphyr::from_str(&billing).unwrap();
        assert_eq!(
            back,
            serde_json::json!({
                "exec": "/usr/lib/billing/role",
                "depends": ["http"],
                "timeout": "1m30s",
                "config": { "currency": "EUR", "limits": [1, 2], "nested": { "on": true } },
            }),
            "{billing}"
        );
        let http = section_yaml(t.roles.get("http").unwrap()).unwrap();
        assert!(
            http.find("b:").unwrap() < http.find("a:").unwrap(),
            "{http}"
        );
        let back: serde_json::Value = serde_saphyr::from_str(&http).unwrap();
        assert_eq!(
            back,
            serde_json::json!({ "listen": { "b": 8081, "a": null } })
        );
    }
}
