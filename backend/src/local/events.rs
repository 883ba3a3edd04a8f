//! The events API Gateway sends its integration, built as it builds them:
//! `$connect` with the handshake's headers and query, messages routed by
//! `$request.body.action`, `$disconnect` with its status and reason.

use std::collections::HashMap;

use aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use aws_lambda_events::query_map::QueryMap;
use axum::http::{HeaderMap, header};

use super::gateway::{Gateway, Integration};
use super::session::Ending;
use crate::clock::now_ms;
use crate::ids::random_id;
use crate::pusher::local::ConnectionInfo;

impl<I: Integration> Gateway<I> {
    pub(super) fn connect_event(
        &self,
        connection_id: &str,
        info: &ConnectionInfo,
        headers: &HeaderMap,
        query: Vec<(String, String)>,
    ) -> ApiGatewayWebsocketProxyRequest {
        let mut event = self.event(connection_id, info, "$connect", "CONNECT");
        event.headers = headers.clone();
        event.multi_value_headers = headers.clone();
        let mut parameters: HashMap<String, Vec<String>> = HashMap::new();
        for (key, value) in query {
            parameters.entry(key).or_default().push(value);
        }
        let parameters = QueryMap::from(parameters);
        event.query_string_parameters = parameters.clone();
        event.multi_value_query_string_parameters = parameters;
        event
    }

    /// API Gateway's `$disconnect` carries a few headers of its own, most of
    /// them empty.
    pub(super) fn disconnect_event(
        &self,
        connection_id: &str,
        info: &ConnectionInfo,
        ending: Ending,
    ) -> ApiGatewayWebsocketProxyRequest {
        let mut event = self.event(connection_id, info, "$disconnect", "DISCONNECT");
        event.request_context.disconnect_status_code = Some(i64::from(ending.status_code));
        event.request_context.disconnect_reason = Some(ending.reason);
        let mut headers = HeaderMap::new();
        if let Ok(host) = self.config.domain_name.parse() {
            headers.insert(header::HOST, host);
        }
        for name in ["x-api-key", "x-forwarded-for", "x-restapi"] {
            headers.insert(name, axum::http::HeaderValue::from_static(""));
        }
        event.multi_value_headers = headers.clone();
        event.headers = headers;
        event
    }

    pub(super) fn message_event(
        &self,
        connection_id: &str,
        info: &ConnectionInfo,
        body: String,
        is_base64_encoded: bool,
    ) -> ApiGatewayWebsocketProxyRequest {
        let route = if is_base64_encoded {
            "$default"
        } else {
            self.select_route(&body)
        };
        let mut event = self.event(connection_id, info, route, "MESSAGE");
        event.request_context.message_id = Some(random_id(16));
        event.body = Some(body);
        event.is_base64_encoded = is_base64_encoded;
        event
    }

    /// `$request.body.action`: the route named by the frame's `action`, or
    /// `$default` when there is no such route (or no JSON object at all).
    fn select_route(&self, body: &str) -> &str {
        #[derive(serde::Deserialize)]
        struct Probe<'a> {
            #[serde(borrow)]
            action: Option<std::borrow::Cow<'a, str>>,
        }
        serde_json::from_str::<Probe>(body)
            .ok()
            .and_then(|probe| probe.action)
            .and_then(|action| self.config.routes.iter().find(|route| **route == action))
            .map_or("$default", String::as_str)
    }

    fn event(
        &self,
        connection_id: &str,
        info: &ConnectionInfo,
        route_key: &str,
        event_type: &str,
    ) -> ApiGatewayWebsocketProxyRequest {
        let mut event = ApiGatewayWebsocketProxyRequest::default();
        let context = &mut event.request_context;
        context.route_key = Some(route_key.to_owned());
        context.event_type = Some(event_type.to_owned());
        context.connection_id = Some(connection_id.to_owned());
        context.stage = Some(self.config.stage.clone());
        context.apiid = Some("local".to_owned());
        context.domain_name = Some(self.config.domain_name.clone());
        let request_id = random_id(16);
        context.extended_request_id = Some(request_id.clone());
        context.request_id = Some(request_id);
        context.connected_at = info.connected_at_ms as i64;
        let now = now_ms();
        context.request_time_epoch = now as i64;
        context.request_time = Some(request_time(now));
        context.message_direction = Some("IN".to_owned());
        context.identity.source_ip = Some(info.source_ip.clone());
        context.identity.user_agent = Some(info.user_agent.clone());
        event
    }
}

/// API Gateway's `requestTime`: `25/Nov/2026:12:00:00 +0000`.
fn request_time(ms: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let seconds = ms / 1000;
    let (days, of_day) = ((seconds / 86_400) as i64, seconds % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        MONTHS[(month - 1) as usize],
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::gateway::GatewayConfig;
    use crate::pusher::local::LocalPusher;
    use aws_lambda_events::apigw::ApiGatewayProxyResponse;

    struct Nothing;

    impl Integration for Nothing {
        async fn invoke(&self, _: ApiGatewayWebsocketProxyRequest) -> ApiGatewayProxyResponse {
            ApiGatewayProxyResponse::default()
        }
    }

    fn gateway() -> Gateway<Nothing> {
        Gateway::new(Nothing, LocalPusher::default(), GatewayConfig::default())
    }

    /// Every key the recorded event has, with the JSON type of its value,
    /// recursively; values themselves differ (ids, times, addresses).
    fn shape(value: &serde_json::Value, path: &str, out: &mut Vec<String>) {
        use serde_json::Value;
        let kind = match value {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        out.push(format!("{path}: {kind}"));
        match value {
            // Header names vary; their values' shapes do not.
            Value::Object(map) if path.ends_with("eaders") => {
                for value in map.values() {
                    shape(value, &format!("{path}.*"), out);
                }
            }
            Value::Object(map) => {
                for (key, value) in map {
                    shape(value, &format!("{path}.{key}"), out);
                }
            }
            Value::Array(items) => {
                for item in items.iter().take(1) {
                    shape(item, &format!("{path}[]"), out);
                }
            }
            _ => {}
        }
    }

    fn shape_of(value: &serde_json::Value) -> Vec<String> {
        let mut out = Vec::new();
        shape(value, "", &mut out);
        out.sort();
        out.dedup();
        out
    }

    fn recorded(file: &str) -> serde_json::Value {
        let path = format!("{}/testdata/{file}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn request_times_are_written_as_api_gateway_writes_them() {
        assert_eq!(
            request_time(1_795_608_000_012),
            "25/Nov/2026:12:00:00 +0000"
        );
        assert_eq!(request_time(0), "01/Jan/1970:00:00:00 +0000");
        assert_eq!(request_time(951_825_599_000), "29/Feb/2000:11:59:59 +0000");
    }

    #[test]
    fn events_have_the_shape_api_gateway_sends() {
        let gateway = gateway();
        let info = ConnectionInfo::new(1_795_694_400_000, "203.0.113.7".into(), "test".into());
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "evil.example".parse().unwrap());
        headers.insert(header::USER_AGENT, "test".parse().unwrap());
        let query = vec![
            ("room".to_owned(), "chat:1".to_owned()),
            ("name".to_owned(), "Ada".to_owned()),
        ];
        let connect = gateway.connect_event("c1", &info, &headers, query);
        let connect = super::super::lambda::payload(&connect).unwrap();
        assert_eq!(shape_of(&connect), shape_of(&recorded("connect.json")));
        assert_eq!(connect["queryStringParameters"]["room"], "chat:1");
        assert_eq!(
            connect["requestContext"]["domainName"], gateway.config.domain_name,
            "not the client's Host header"
        );

        let message = gateway.message_event(
            "c1",
            &info,
            r#"{"action":"sendmessage","data":"hi"}"#.into(),
            false,
        );
        let message = super::super::lambda::payload(&message).unwrap();
        assert_eq!(shape_of(&message), shape_of(&recorded("sendmessage.json")));

        let ending = Ending {
            status_code: 1001,
            reason: "Going away".into(),
        };
        let disconnect = gateway.disconnect_event("c1", &info, ending);
        let disconnect = super::super::lambda::payload(&disconnect).unwrap();
        assert_eq!(
            shape_of(&disconnect),
            shape_of(&recorded("disconnect.json"))
        );
    }
}
