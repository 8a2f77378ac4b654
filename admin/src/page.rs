//! The status page on the admin listener (`/`): one HTML page and its script, with the chart
//! library (uPlot, MIT, vendored in `admin/assets/uplot`) built into the binary, so the page
//! needs no build step and no network. Its data comes from the admin API, under the token.

use crate::http::Response;

const PAGE: &str = include_str!("../assets/status.html");
const SCRIPT: &str = include_str!("../assets/status.js");
const UPLOT_JS: &str = include_str!("../assets/uplot/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../assets/uplot/uPlot.min.css");

/// The page or asset at `path`, if it is one.
pub fn asset(path: &str) -> Option<Response> {
    let (content_type, body) = match path {
        "/" | "/status" => ("text/html; charset=utf-8", PAGE),
        "/assets/status.js" => ("text/javascript; charset=utf-8", SCRIPT),
        "/assets/uplot.iife.min.js" => ("text/javascript; charset=utf-8", UPLOT_JS),
        "/assets/uplot.min.css" => ("text/css; charset=utf-8", UPLOT_CSS),
        _ => return None,
    };
    Some(Response { status: 200, content_type, body: body.as_bytes().to_vec() })
}
