//! chat-local's other integration: instead of calling the handlers in this
//! process, it invokes Lambda functions through the Lambda Invoke API
//! (`cargo lambda watch` serves it), routing each event to the function the
//! SAM template names for its route. That makes chat-local a local API
//! Gateway for WebSocket APIs, which SAM CLI does not offer, and it runs the
//! real Lambda binaries.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, anyhow, bail};
use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_yaml::Value;

use super::gateway::Integration;

/// Which function serves which route key, as the template wires them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LambdaRoutes {
    functions: HashMap<String, String>,
}

impl LambdaRoutes {
    pub fn from_template_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the template {}", path.display()))?;
        Self::from_template(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Follows each `AWS::ApiGatewayV2::Route`'s `Target` to its integration,
    /// the integration's `IntegrationUri` to its function, and names the
    /// function by its cargo-lambda binary (`Metadata.BuildProperties.Binary`,
    /// else the resource's logical id).
    pub fn from_template(text: &str) -> anyhow::Result<Self> {
        let template: Value = serde_yaml::from_str(text).context("the template is not YAML")?;
        let resources = template
            .get("Resources")
            .and_then(Value::as_mapping)
            .ok_or_else(|| anyhow!("the template has no Resources"))?;
        let resource = |id: &str| resources.get(id);
        let mut functions = HashMap::new();
        for (_, route) in resources {
            if route.get("Type").and_then(Value::as_str) != Some("AWS::ApiGatewayV2::Route") {
                continue;
            }
            let properties = &route["Properties"];
            let route_key = properties["RouteKey"]
                .as_str()
                .ok_or_else(|| anyhow!("a route without a RouteKey"))?;
            let integration_id = references(&properties["Target"])
                .into_iter()
                .next()
                .ok_or_else(|| anyhow!("route {route_key} has no integration target"))?;
            let integration = resource(&integration_id)
                .ok_or_else(|| anyhow!("route {route_key} targets a missing {integration_id}"))?;
            let function_id = references(&integration["Properties"]["IntegrationUri"])
                .into_iter()
                .find_map(|reference| reference.strip_suffix(".Arn").map(str::to_owned))
                .ok_or_else(|| anyhow!("{integration_id} names no function"))?;
            let function = resource(&function_id)
                .ok_or_else(|| anyhow!("{integration_id} names a missing {function_id}"))?;
            let binary = function["Metadata"]["BuildProperties"]["Binary"]
                .as_str()
                .map_or(function_id.clone(), str::to_owned);
            functions.insert(route_key.to_owned(), binary);
        }
        if functions.is_empty() {
            bail!("the template defines no WebSocket routes");
        }
        Ok(Self { functions })
    }

    pub fn function_for(&self, route_key: &str) -> Option<&str> {
        self.functions
            .get(route_key)
            .or_else(|| self.functions.get("$default"))
            .map(String::as_str)
    }

    /// The route keys that `$request.body.action` can select.
    pub fn action_routes(&self) -> Vec<String> {
        let mut routes: Vec<String> = self
            .functions
            .keys()
            .filter(|key| !key.starts_with('$'))
            .cloned()
            .collect();
        routes.sort();
        routes
    }
}

/// The `${Name}` references in a `!Sub` (or `Fn::Sub`, or plain) string.
fn references(value: &Value) -> Vec<String> {
    let text = match value {
        Value::String(text) => Some(text.as_str()),
        Value::Tagged(tagged) if tagged.tag == "Sub" => tagged.value.as_str(),
        Value::Mapping(mapping) => mapping.get("Fn::Sub").and_then(Value::as_str),
        _ => None,
    };
    let Some(mut text) = text else {
        return Vec::new();
    };
    let mut found = Vec::new();
    while let Some(start) = text.find("${") {
        let rest = &text[start + 2..];
        let Some(end) = rest.find('}') else { break };
        found.push(rest[..end].to_owned());
        text = &rest[end + 1..];
    }
    found
}

/// Invokes functions through the Lambda Invoke API at `endpoint`.
pub struct LambdaInvoker {
    endpoint: String,
    routes: LambdaRoutes,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl LambdaInvoker {
    pub fn new(endpoint: &str, routes: LambdaRoutes) -> Self {
        Self {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            routes,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn call(
        &self,
        function: &str,
        event: &ApiGatewayWebsocketProxyRequest,
    ) -> anyhow::Result<ApiGatewayProxyResponse> {
        let uri = format!(
            "{}/2015-03-31/functions/{function}/invocations",
            self.endpoint
        );
        let request = axum::http::Request::post(&uri)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(serde_json::to_vec(&payload(
                event,
            )?)?)))?;
        let response = self
            .client
            .request(request)
            .await
            .with_context(|| format!("cannot reach {uri}"))?;
        let status = response.status();
        let function_error = response.headers().contains_key("x-amz-function-error");
        let body = response.into_body().collect().await?.to_bytes();
        if !status.is_success() || function_error {
            bail!(
                "{function} failed ({status}): {}",
                String::from_utf8_lossy(&body)
            );
        }
        serde_json::from_slice(&body)
            .with_context(|| format!("{function} returned something other than a proxy response"))
    }
}

impl Integration for LambdaInvoker {
    async fn invoke(&self, event: ApiGatewayWebsocketProxyRequest) -> ApiGatewayProxyResponse {
        let route = event
            .request_context
            .route_key
            .clone()
            .unwrap_or_else(|| "$default".to_owned());
        let Some(function) = self.routes.function_for(&route) else {
            tracing::warn!(route, "no function for this route");
            return failure(404);
        };
        match self.call(function, &event).await {
            Ok(response) => response,
            Err(error) => {
                // API Gateway answers a failed integration with a 500 of its
                // own, and tells the client (see `INTEGRATION_FAILED`).
                tracing::error!(
                    route,
                    function,
                    error = format!("{error:#}"),
                    "invoke failed"
                );
                let mut response = failure(500);
                response.headers.insert(
                    super::gateway::INTEGRATION_FAILED,
                    axum::http::HeaderValue::from_static("1"),
                );
                response
            }
        }
    }
}

fn failure(status_code: i64) -> ApiGatewayProxyResponse {
    let mut response = ApiGatewayProxyResponse::default();
    response.status_code = status_code;
    response
}

/// The event as API Gateway puts it on the wire, which is not quite how
/// `aws_lambda_events` serializes it: `queryStringParameters` holds single
/// strings (the last value of a repeated key), and what API Gateway leaves
/// out is left out rather than sent as `null` or empty.
pub fn payload(event: &ApiGatewayWebsocketProxyRequest) -> serde_json::Result<serde_json::Value> {
    use serde_json::Value;
    let mut value = serde_json::to_value(event)?;
    if let Some(Value::Object(query)) = value.get_mut("queryStringParameters") {
        for values in query.values_mut() {
            if let Value::Array(all) = values {
                *values = all.pop().unwrap_or(Value::String(String::new()));
            }
        }
    }
    fn prune(value: &mut Value) {
        if let Value::Object(map) = value {
            map.retain(|_, v| {
                prune(v);
                !(v.is_null() || v.as_object().is_some_and(|o| o.is_empty()))
            });
        }
    }
    prune(&mut value);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_route_wiring_from_the_project_template() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../template.yaml");
        let routes = LambdaRoutes::from_template_file(&path).unwrap();
        for route in [
            "$connect",
            "$disconnect",
            "$default",
            "join",
            "sendmessage",
            "leave",
            "history",
        ] {
            assert_eq!(routes.function_for(route), Some("chat-lambda"), "{route}");
        }
        assert_eq!(
            routes.action_routes(),
            ["history", "join", "leave", "sendmessage"]
        );
    }

    #[test]
    fn follows_targets_to_functions_and_names_them() {
        let template = r#"
Resources:
  Api: { Type: AWS::ApiGatewayV2::Api }
  PingRoute:
    Type: AWS::ApiGatewayV2::Route
    Properties: { RouteKey: ping, Target: !Sub "integrations/${PingIntegration}" }
  DefaultRoute:
    Type: AWS::ApiGatewayV2::Route
    Properties:
      RouteKey: $default
      Target: { "Fn::Sub": "integrations/${DefaultIntegration}" }
  PingIntegration:
    Type: AWS::ApiGatewayV2::Integration
    Properties:
      IntegrationUri: !Sub "arn:aws:apigateway:${AWS::Region}:lambda:path/2015-03-31/functions/${PingFunction.Arn}/invocations"
  DefaultIntegration:
    Type: AWS::ApiGatewayV2::Integration
    Properties:
      IntegrationUri: !Sub "arn:x:${OtherFunction.Arn}/invocations"
  PingFunction:
    Type: AWS::Serverless::Function
    Metadata: { BuildProperties: { Binary: pinger } }
  OtherFunction: { Type: AWS::Serverless::Function }
"#;
        let routes = LambdaRoutes::from_template(template).unwrap();
        assert_eq!(routes.function_for("ping"), Some("pinger"));
        assert_eq!(routes.function_for("$default"), Some("OtherFunction"));
        assert_eq!(routes.function_for("unrouted"), Some("OtherFunction"));
        assert!(LambdaRoutes::from_template("Resources: {}").is_err());
        let broken = template.replace("${PingIntegration}", "${Nowhere}");
        assert!(LambdaRoutes::from_template(&broken).is_err());
    }
}
