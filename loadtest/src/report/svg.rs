//! Line charts as inline SVG, written by hand so the HTML report needs no script, stylesheet
//! or font from anywhere: it opens the same in a browser without a network.

use std::fmt::Write as _;

#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub color: &'static str,
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    Linear,
    /// Base 10; values <= 0 are drawn at the bottom edge.
    Log,
}

#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    pub y_scale: Scale,
    /// Fixed x ticks (position, label); `None` picks round numbers.
    pub x_ticks: Option<Vec<(f64, String)>>,
    pub y_format: fn(f64) -> String,
    /// A shaded x range with its label (the warm-up).
    pub shade: Option<(f64, f64, String)>,
}

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 340.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = 28.0; // room for the last x label ("99.999%"), centred on the edge
const TOP: f64 = 34.0;
const BOTTOM: f64 = 48.0;

/// Escapes text for HTML and SVG.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// About `target` round tick values covering `low..=high` (steps of 1, 2 or 5 × 10^k).
pub fn nice_ticks(low: f64, high: f64, target: usize) -> Vec<f64> {
    if high.partial_cmp(&low) != Some(std::cmp::Ordering::Greater) {
        return vec![low];
    }
    let raw = (high - low) / target.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    let first = (low / step).ceil() * step;
    let mut ticks = Vec::new();
    let mut tick = first;
    while tick <= high + step * 1e-9 && ticks.len() < 50 {
        ticks.push(if tick.abs() < step * 1e-9 { 0.0 } else { tick });
        tick += step;
    }
    ticks
}

/// A round tick value without float noise (`0.30000000000000004` is `0.3`).
pub fn tick_label(value: f64) -> String {
    let text = format!("{value:.6}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".into()
    } else {
        text.to_owned()
    }
}

fn log_ticks(low: f64, high: f64) -> Vec<f64> {
    let mut ticks = Vec::new();
    let mut power = 10f64.powf(low.log10().floor());
    let decades = (high / low).log10();
    while power <= high * 1.0001 && ticks.len() < 60 {
        for m in [1.0, 2.0, 5.0] {
            let value = power * m;
            if value >= low * 0.9999 && value <= high * 1.0001 && (m == 1.0 || decades < 3.0) {
                ticks.push(value);
            }
        }
        power *= 10.0;
    }
    ticks
}

/// Renders `chart` as an `<svg>` element.
pub fn render(chart: &Chart) -> String {
    let points = || chart.series.iter().flat_map(|s| s.points.iter());
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" aria-label="{title}">"#,
        title = escape(&chart.title)
    );
    let _ = write!(
        svg,
        r#"<text x="{LEFT}" y="20" class="title">{}</text>"#,
        escape(&chart.title)
    );
    if points().next().is_none() {
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" class="empty">no data</text></svg>"#,
            WIDTH / 2.0,
            HEIGHT / 2.0
        );
        return svg;
    }
    let (mut x_low, mut x_high) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut y_low, mut y_high) = (f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in points() {
        x_low = x_low.min(x);
        x_high = x_high.max(x);
        if chart.y_scale == Scale::Linear || y > 0.0 {
            y_low = y_low.min(y);
            y_high = y_high.max(y);
        }
    }
    match &chart.x_ticks {
        Some(ticks) => {
            for (x, _) in ticks {
                x_low = x_low.min(*x);
                x_high = x_high.max(*x);
            }
        }
        // A time axis starts at 0, so that its first tick is the run's start.
        None => x_low = x_low.min(0.0),
    }
    if x_high <= x_low {
        x_high = x_low + 1.0;
    }
    let (y_low, y_high) = match chart.y_scale {
        Scale::Linear => {
            let high = if y_high > 0.0 { y_high * 1.05 } else { 1.0 };
            (0.0f64.min(y_low), high)
        }
        Scale::Log => {
            let low = if y_low.is_finite() && y_low > 0.0 {
                y_low
            } else {
                1.0
            };
            let high = if y_high.is_finite() && y_high > low {
                y_high
            } else {
                low * 10.0
            };
            (
                10f64.powf(low.log10().floor()),
                10f64.powf(high.log10().ceil()),
            )
        }
    };
    let plot_width = WIDTH - LEFT - RIGHT;
    let plot_height = HEIGHT - TOP - BOTTOM;
    let px = |x: f64| LEFT + (x - x_low) / (x_high - x_low) * plot_width;
    let py = |y: f64| {
        let fraction = match chart.y_scale {
            Scale::Linear => (y - y_low) / (y_high - y_low),
            Scale::Log if y <= 0.0 => 0.0,
            Scale::Log => (y.log10() - y_low.log10()) / (y_high.log10() - y_low.log10()),
        };
        TOP + plot_height * (1.0 - fraction.clamp(0.0, 1.0))
    };

    if let Some((from, to, label)) = &chart.shade
        && to > from
    {
        let (left, right) = (px(from.max(x_low)), px(to.min(x_high)));
        if right > left {
            let _ = write!(
                svg,
                r#"<rect x="{left:.1}" y="{TOP}" width="{:.1}" height="{plot_height}" class="shade"/><text x="{:.1}" y="{:.1}" class="shade-label">{}</text>"#,
                right - left,
                left + 4.0,
                TOP + 14.0,
                escape(label)
            );
        }
    }
    // Grid and y ticks.
    let y_ticks = match chart.y_scale {
        Scale::Linear => nice_ticks(y_low, y_high, 5),
        Scale::Log => log_ticks(y_low, y_high),
    };
    for y in y_ticks {
        let at = py(y);
        let _ = write!(
            svg,
            r#"<line x1="{LEFT}" x2="{:.1}" y1="{at:.1}" y2="{at:.1}" class="grid"/><text x="{:.1}" y="{:.1}" class="tick" text-anchor="end">{}</text>"#,
            WIDTH - RIGHT,
            LEFT - 6.0,
            at + 4.0,
            escape(&(chart.y_format)(y))
        );
    }
    let x_ticks: Vec<(f64, String)> = match &chart.x_ticks {
        Some(ticks) => ticks.clone(),
        None => nice_ticks(x_low, x_high, 10)
            .into_iter()
            .map(|x| (x, tick_label(x)))
            .collect(),
    };
    for (x, label) in &x_ticks {
        let at = px(*x);
        let _ = write!(
            svg,
            r#"<line x1="{at:.1}" x2="{at:.1}" y1="{TOP}" y2="{:.1}" class="grid"/><text x="{at:.1}" y="{:.1}" class="tick" text-anchor="middle">{}</text>"#,
            TOP + plot_height,
            TOP + plot_height + 16.0,
            escape(label)
        );
    }
    let _ = write!(
        svg,
        r#"<rect x="{LEFT}" y="{TOP}" width="{plot_width}" height="{plot_height}" class="frame"/>"#
    );
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" class="axis" text-anchor="middle">{}</text>"#,
        LEFT + plot_width / 2.0,
        HEIGHT - 8.0,
        escape(&chart.x_label)
    );
    let _ = write!(
        svg,
        r#"<text transform="translate(14 {:.1}) rotate(-90)" class="axis" text-anchor="middle">{}</text>"#,
        TOP + plot_height / 2.0,
        escape(&chart.y_label)
    );
    for series in &chart.series {
        if series.points.is_empty() {
            continue;
        }
        let mut path = String::new();
        for (index, &(x, y)) in series.points.iter().enumerate() {
            let _ = write!(
                path,
                "{}{:.1},{:.1}",
                if index == 0 { "M" } else { " L" },
                px(x),
                py(y)
            );
        }
        let _ = write!(
            svg,
            r#"<path d="{path}" fill="none" stroke="{}" stroke-width="1.8"{}><title>{}</title></path>"#,
            series.color,
            if series.dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            },
            escape(&series.name)
        );
        if series.points.len() == 1 {
            let (x, y) = series.points[0];
            let _ = write!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                px(x),
                py(y),
                series.color
            );
        }
    }
    // Legend, right-aligned in the title row.
    let mut legend_x = WIDTH - RIGHT;
    for series in chart.series.iter().rev().filter(|s| !s.points.is_empty()) {
        let width = 26.0 + 6.5 * series.name.chars().count() as f64;
        legend_x -= width;
        let _ = write!(
            svg,
            r#"<line x1="{legend_x:.1}" x2="{:.1}" y1="16" y2="16" stroke="{}" stroke-width="3"{}/><text x="{:.1}" y="20" class="legend">{}</text>"#,
            legend_x + 16.0,
            series.color,
            if series.dashed {
                r#" stroke-dasharray="4 3""#
            } else {
                ""
            },
            legend_x + 20.0,
            escape(&series.name)
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(series: Vec<Series>, y_scale: Scale) -> Chart {
        Chart {
            title: "t <1>".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            series,
            y_scale,
            x_ticks: None,
            y_format: |v| format!("{v}"),
            shade: Some((0.0, 2.0, "warm-up".into())),
        }
    }

    #[test]
    fn tick_labels_carry_no_float_noise_and_a_time_axis_starts_at_zero() {
        assert_eq!(tick_label(0.1 + 0.2), "0.3");
        assert_eq!(tick_label(20.0), "20");
        assert_eq!(tick_label(-0.0), "0");
        let svg = render(&chart(
            vec![Series {
                name: "a".into(),
                color: "#000",
                points: vec![(3.0, 1.0), (9.0, 2.0)],
                dashed: false,
            }],
            Scale::Linear,
        ));
        assert!(svg.contains(">0</text>"), "{svg}");
        let ticks = nice_ticks(0.0, 9.0, 10);
        let steps: Vec<f64> = ticks.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            steps.iter().all(|s| (s - steps[0]).abs() < 1e-9),
            "{ticks:?}"
        );
    }

    #[test]
    fn ticks_are_round_numbers_covering_the_range() {
        assert_eq!(
            nice_ticks(0.0, 10.0, 5),
            vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
        );
        assert_eq!(nice_ticks(0.0, 1.0, 4), vec![0.0, 0.5, 1.0]);
        assert_eq!(
            log_ticks(10.0, 1000.0),
            vec![10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0]
        );
    }

    #[test]
    fn a_chart_is_one_svg_element_with_escaped_text_and_a_path_per_series() {
        let svg = render(&chart(
            vec![
                Series {
                    name: "a".into(),
                    color: "#000",
                    points: vec![(0.0, 1.0), (5.0, 3.0)],
                    dashed: false,
                },
                Series {
                    name: "b&c".into(),
                    color: "#f00",
                    points: vec![(0.0, 2.0), (5.0, 100.0)],
                    dashed: true,
                },
            ],
            Scale::Log,
        ));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<path").count(), 2);
        assert!(svg.contains("t &lt;1&gt;") && svg.contains("b&amp;c"));
        assert!(svg.contains("warm-up"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn an_empty_chart_says_so() {
        let svg = render(&chart(vec![], Scale::Linear));
        assert!(svg.contains("no data"));
    }
}
