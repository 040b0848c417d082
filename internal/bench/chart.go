package bench

import (
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"
	"math"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// Chart geometry, in pixels.
const (
	chartWidth  = 1000
	panelHeight = 260
	marginLeft  = 60
	marginRight = 20
	panelTop    = 30 // title line
	panelBottom = 40 // image names and the legend
)

var (
	colorBG    = color.RGBA{255, 255, 255, 255}
	colorAxis  = color.RGBA{80, 80, 80, 255}
	colorGrid  = color.RGBA{225, 225, 225, 255}
	colorText  = color.RGBA{20, 20, 20, 255}
	colorLimit = color.RGBA{200, 0, 0, 255}
	// One colour per mode, in the order of Result.Modes.
	modeColors = []color.RGBA{{110, 110, 110, 255}, {230, 120, 20, 255}, {40, 110, 200, 255}, {60, 160, 60, 255}, {150, 70, 180, 255}, {200, 170, 30, 255}}
)

// WriteChart draws, per link, a panel of bars: for each image one bar per mode, the median
// total time to ready, with a whisker from min to max, and the image's physical limit on
// that link as a red line across its group.
func WriteChart(w io.Writer, res *Result) error {
	if len(res.Links) == 0 || len(res.Summaries) == 0 {
		return errors.New("no summaries to draw")
	}
	h := len(res.Links) * (panelTop + panelHeight + panelBottom)
	img := image.NewRGBA(image.Rect(0, 0, chartWidth, h))
	draw.Draw(img, img.Bounds(), &image.Uniform{colorBG}, image.Point{}, draw.Src)
	var images []string
	for _, im := range res.Images {
		images = append(images, im.Name)
	}
	for i, l := range res.Links {
		top := i * (panelTop + panelHeight + panelBottom)
		drawPanel(img, top, res, l, images)
	}
	return png.Encode(w, img)
}

func drawPanel(img *image.RGBA, top int, res *Result, l Link, images []string) {
	text(img, marginLeft, top+18, fmt.Sprintf("link %s (%s, %s RTT): time to ready, s (median, min-max; red: limit)", l.Name, rateString(l.Rate), l.RTT))
	y0 := top + panelTop + panelHeight // the x axis
	// The scale: the largest max or limit, rounded up to a nice step.
	top1 := 0.0
	for _, s := range res.Summaries {
		if s.Link == l.Name {
			top1 = math.Max(top1, s.Total.Max)
		}
	}
	for _, lim := range res.Limits {
		if lim.Link == l.Name {
			top1 = math.Max(top1, lim.Seconds)
		}
	}
	step := niceStep(top1 / 5)
	ymax := step * math.Ceil(top1/step)
	if ymax <= 0 {
		ymax, step = 1, 0.2
	}
	yOf := func(v float64) int { return y0 - int(v/ymax*float64(panelHeight)) }
	for v := 0.0; v <= ymax+step/2; v += step {
		y := yOf(v)
		hline(img, marginLeft, chartWidth-marginRight, y, colorGrid)
		text(img, 4, y+4, fmt.Sprintf("%6.4g", v))
	}
	hline(img, marginLeft, chartWidth-marginRight, y0, colorAxis)
	vline(img, marginLeft, y0-panelHeight, y0, colorAxis)

	if len(images) == 0 {
		return
	}
	groupW := (chartWidth - marginLeft - marginRight) / len(images)
	barW := min(80, max(4, (groupW-20)/max(1, len(res.Modes))))
	for gi, im := range images {
		gx := marginLeft + gi*groupW + 10
		for mi, m := range res.Modes {
			for _, s := range res.Summaries {
				if s.Link != l.Name || s.Image != im || s.Mode != m {
					continue
				}
				x := gx + mi*barW
				c := modeColors[mi%len(modeColors)]
				fill(img, image.Rect(x+2, yOf(s.Total.Median), x+barW-2, y0), c)
				mid := x + barW/2
				vline(img, mid, yOf(s.Total.Max), yOf(s.Total.Min), colorAxis)
				hline(img, mid-3, mid+4, yOf(s.Total.Max), colorAxis)
				hline(img, mid-3, mid+4, yOf(s.Total.Min), colorAxis)
				text(img, x+2, yOf(s.Total.Median)-3, fmt.Sprintf("%.1f", s.Total.Median))
			}
		}
		for _, lim := range res.Limits {
			if lim.Link == l.Name && lim.Image == im {
				y := yOf(lim.Seconds)
				hline(img, gx, gx+groupW-20, y, colorLimit)
				hline(img, gx, gx+groupW-20, y+1, colorLimit)
			}
		}
		text(img, gx, y0+15, im)
	}
	// The legend.
	lx := marginLeft
	for mi, m := range res.Modes {
		fill(img, image.Rect(lx, y0+22, lx+10, y0+32), modeColors[mi%len(modeColors)])
		text(img, lx+14, y0+32, string(m))
		lx += 110
	}
}

// niceStep rounds x up to 1, 2 or 5 times a power of ten.
func niceStep(x float64) float64 {
	if x <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(x)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= x {
			return m * p
		}
	}
	return 10 * p
}

func fill(img *image.RGBA, r image.Rectangle, c color.Color) {
	draw.Draw(img, r.Canon().Intersect(img.Bounds()), &image.Uniform{c}, image.Point{}, draw.Src)
}

func hline(img *image.RGBA, x0, x1, y int, c color.Color) {
	for x := x0; x < x1; x++ {
		img.Set(x, y, c)
	}
}

func vline(img *image.RGBA, x, y0, y1 int, c color.Color) {
	if y0 > y1 {
		y0, y1 = y1, y0
	}
	for y := y0; y <= y1; y++ {
		img.Set(x, y, c)
	}
}

func text(img *image.RGBA, x, y int, s string) {
	d := font.Drawer{Dst: img, Src: image.NewUniform(colorText), Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
	d.DrawString(s)
}
