//! The CRD field reference of the README, generated from the schema so that
//! it cannot drift from what the API server enforces.

use kube::CustomResourceExt;
use serde_json::Value;

use crate::{PostgresBackup, PostgresCluster};

/// Markdown tables of every spec field of the two resources: path, type,
/// default, description.
pub fn crd_reference() -> String {
    let mut out = table(&PostgresCluster::crd());
    out.push_str("\n`PostgresBackup` (`kubectl get pgb`):\n\n");
    out.push_str(&table(&PostgresBackup::crd()));
    out
}

fn table(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> String {
    let schema = crd
        .spec
        .versions
        .first()
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or(Value::Null);
    let mut out = String::from("| field | type | default | description |\n|---|---|---|---|\n");
    walk(&schema["properties"]["spec"], "spec", &mut out);
    out
}

fn walk(schema: &Value, path: &str, out: &mut String) {
    let Some(properties) = schema["properties"].as_object() else {
        return;
    };
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for (name, prop) in properties {
        let field = format!("{path}.{name}");
        let mut kind = prop["type"].as_str().unwrap_or("object").to_owned();
        if let Some(values) = prop["enum"].as_array() {
            kind = values
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" \\| ");
        } else if kind == "object" && prop["additionalProperties"].is_object() {
            kind = "map".to_owned();
        } else if kind == "array" {
            kind = format!("[]{}", prop["items"]["type"].as_str().unwrap_or("object"));
        }
        if required.contains(&name.as_str()) {
            kind.push_str(", required");
        }
        // Nested objects show their defaults on their own fields.
        let default = match &prop["default"] {
            Value::Null | Value::Object(_) => String::new(),
            v => format!("`{v}`"),
        };
        let description = prop["description"]
            .as_str()
            .unwrap_or_default()
            .replace('\n', " ")
            .replace('|', "\\|");
        out.push_str(&format!(
            "| `{field}` | {kind} | {default} | {description} |\n"
        ));
        // k8s types (resources) are documented by Kubernetes itself.
        if name != "resources" {
            walk(prop, &field, out);
        }
    }
}
